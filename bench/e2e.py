"""GPU end-to-end benchmark: one Wan2.1 transformer forward, dense vs sparse plans. See `python bench/e2e.py --help`."""

import sys

from sparsevdit.bench.e2e import main

if __name__ == "__main__":
    sys.exit(main())
