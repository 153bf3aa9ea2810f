"""lgt command line."""
