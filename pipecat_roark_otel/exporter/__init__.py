"""Roark span exporter."""
