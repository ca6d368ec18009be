"""Local Roark."""
