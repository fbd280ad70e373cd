"""``python -m edgec ...`` is ``edgec ...`` (same parser, same exit codes)."""

import sys

from edgec.cli import main

if __name__ == "__main__":
    sys.exit(main())
