"""`python -m backline.cli`: the same as the `backline` command."""

import sys

from backline.cli import main

if __name__ == "__main__":  # imported by a module walk, it does nothing
    sys.exit(main())
