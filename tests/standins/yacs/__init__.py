"""Stand-in for yacs (tests only)."""
