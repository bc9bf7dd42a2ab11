"""`python -m engine ...` is `transformer-train ...` (what torchrun launches)."""

import sys

from engine.cli import main

sys.exit(main())
