"""`python -m noisydln` runs the command line."""

import sys

from noisydln.cli import main

sys.exit(main())
