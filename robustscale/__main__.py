"""`python -m robustscale` (also what `torchrun -m robustscale train ...` starts)."""

import sys

from robustscale.cli import main

sys.exit(main())
