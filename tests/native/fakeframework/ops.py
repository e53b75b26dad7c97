"""The framework's copy entry point (the tests find its line by the SITE- marker, never by number)."""

import ctypes


def copy_in(cuda, dst, src, n, stream):
    cuda.cuMemcpyHtoDAsync_v2(dst, src, ctypes.c_size_t(n), stream)  # SITE-OPS
