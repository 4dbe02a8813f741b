"""nanobard."""
