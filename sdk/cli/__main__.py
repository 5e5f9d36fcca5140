"""`python -m edgemfm.cli ...`: the same command line as `edgemfm ...`."""

import sys

from edgemfm.cli import main

sys.exit(main())
