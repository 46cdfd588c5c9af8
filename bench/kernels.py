"""GPU kernel benchmark: cuDNN dense SDPA vs sparse backends. See `python bench/kernels.py --help`."""

import sys

from sparsevdit.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main())
