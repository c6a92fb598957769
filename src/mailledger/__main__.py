"""``python -m mailledger``: the same command as the console script."""

from __future__ import annotations

import sys

from mailledger.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
