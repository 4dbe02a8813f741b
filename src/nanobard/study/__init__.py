"""The study (``nanobard run``): its stages in order, their records, the figures and the HTML
report."""
