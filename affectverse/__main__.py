"""``python -m affectverse``: the ``affectverse`` command."""

import sys

from affectverse.cli import main

sys.exit(main())
