"""A stand-in for cupti-python (see cupti.py): tests without a GPU."""
