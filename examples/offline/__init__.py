"""Run examples/bot.py offline: protocol-level stand-ins for its vendors, and callers."""
