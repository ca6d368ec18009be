"""Companion recorder."""
