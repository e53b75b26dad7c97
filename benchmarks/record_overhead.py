"""Kept for its name: `python benchmarks/run_serve.py record` (same arguments) runs this matrix now."""

import sys

from run_serve import main

if __name__ == "__main__":
    main(["record", *sys.argv[1:]])
