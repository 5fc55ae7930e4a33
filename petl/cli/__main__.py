"""``python -m petl.cli``: the ``petl`` command without its console script."""

import sys

from petl.cli import main

sys.exit(main())
