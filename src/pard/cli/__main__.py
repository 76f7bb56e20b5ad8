"""``python -m pard.cli``: the same as the ``pard`` command."""

import sys

from . import main

sys.exit(main())
