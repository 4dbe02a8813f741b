"""The notebooks' measured lessons (small experiments returning records) and their figures."""
