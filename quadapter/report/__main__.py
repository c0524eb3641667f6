"""``python -m quadapter.report PATH...``, the same as ``quadapter-report``."""

import sys

from quadapter.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
