"""``python -m xsam_backend``: see :mod:`xsam_backend.cli`."""

import sys

from xsam_backend.cli import main

if __name__ == "__main__":
    sys.exit(main())
