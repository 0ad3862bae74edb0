"""``python -m hyperplane``: the command line, as the ``hyperplane`` script runs it."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
