"""``python -m dualview``: see :mod:`dualview.cli`."""

import sys

from dualview.cli import main

sys.exit(main())
