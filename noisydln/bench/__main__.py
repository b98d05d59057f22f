"""`python -m noisydln.bench` runs the benchmarks (`noisydln bench`)."""

import sys

from noisydln.bench import main

if __name__ == "__main__":
    sys.exit(main())
