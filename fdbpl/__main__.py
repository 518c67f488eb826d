"""``python -m fdbpl`` runs the ``fdbpl`` command."""

import sys

from fdbpl.cli import main

if __name__ == "__main__":
    sys.exit(main())
