"""``python -m opplan``: the same entry point as the ``opplan`` console script."""

import sys

from opplan.cli import main

sys.exit(main())
