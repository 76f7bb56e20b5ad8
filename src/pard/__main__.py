"""`python -m pard` == the `pard` command (also what `torchrun -m pard train ...` runs)."""

import sys

from .cli import main

sys.exit(main())
