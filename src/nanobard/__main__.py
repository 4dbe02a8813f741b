"""``python -m nanobard`` = the ``nanobard`` command."""

import sys

from nanobard.cli import main

if __name__ == "__main__":
    sys.exit(main())
