"""NumPy baselines of stochastic SAM on a depth-2 diagonal linear network, for benchmarks.

The code lives in `noisydln.bench.baselines` (so that `noisydln bench` works installed); this
module re-exports it for scripts that import `baselines` from this folder.
"""

from noisydln.bench.baselines import QUANTITIES as QUANTITIES
from noisydln.bench.baselines import VECTOR_QUANTITIES as VECTOR_QUANTITIES
from noisydln.bench.baselines import per_seed_loop as per_seed_loop
from noisydln.bench.baselines import vectorised as vectorised
