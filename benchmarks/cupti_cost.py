"""Kept for its name: `python benchmarks/run_serve.py cupti` (same arguments) runs this matrix now."""

import sys

from run_serve import main

if __name__ == "__main__":
    main(["cupti", *sys.argv[1:]])
