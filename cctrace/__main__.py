"""`python -m cctrace` behaves exactly like the `cctrace` console script."""

from cctrace.cli import main

if __name__ == "__main__":
    main()
