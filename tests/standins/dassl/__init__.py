"""Stand-in for the parts of Dassl that fdbpl's CoOp trainer uses (tests only)."""
