"""``python -m odenet ...``: the same command line as the ``odenet`` script."""

import sys

from odenet.cli import main

if __name__ == "__main__":
    sys.exit(main())
