"""The part of cupti-python's `cupti.cupti` that cctrace uses, over the stand-in libcupti
(libcupti_standin.c, built by the test; its path in CCTRACE_TEST_LIBCUPTI)."""

import ctypes
import enum
import os

_lib = ctypes.CDLL(os.environ["CCTRACE_TEST_LIBCUPTI"])
_lib.cuptiGetTimestamp.argtypes = [ctypes.POINTER(ctypes.c_uint64)]


# cupti-python's enums as tests/test_cupti_decode.py holds them (ActivityKind.MEMCPY is 1, as in the C)
from tests.test_cupti_decode import (  # noqa: E402, F401
    ActivityKind,
    ActivityMemcpyKind,
    ActivityMemoryKind,
    ActivityMemoryOperationType,
    ActivityOverheadKind,
    ActivitySynchronizationType,
)


class ActivityFlag(enum.IntEnum):
    NONE = 0
    MEMCPY_ASYNC = 1


class CallbackDomain(enum.IntEnum):
    DRIVER_API = 1
    RUNTIME_API = 2


class ActivityThreadIdType(enum.IntEnum):
    DEFAULT = 0
    SYSTEM = 1


class _Memcpy(ctypes.Structure):  # struct rec of libcupti_standin.c
    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("copy_kind", ctypes.c_uint32),
        ("src_kind", ctypes.c_uint32),
        ("dst_kind", ctypes.c_uint32),
        ("bytes", ctypes.c_uint64),
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("device_id", ctypes.c_uint32),
        ("context_id", ctypes.c_uint32),
        ("stream_id", ctypes.c_uint32),
        ("correlation_id", ctypes.c_uint32),
        ("flags_", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class ActivityMemcpy6:
    @staticmethod
    def from_ptr(addr, owner=True):  # noqa: ARG004
        return _Memcpy.from_buffer_copy(ctypes.string_at(addr, ctypes.sizeof(_Memcpy)))


def _check(rc):
    if rc != 0:
        raise RuntimeError(f"CUPTI stand-in error {rc}")


def set_thread_id_type(kind):
    pass


def activity_enable(kind):
    _check(_lib.cuptiActivityEnable(int(kind)))


def activity_disable(kind):
    _check(_lib.cuptiActivityDisable(int(kind)))


def activity_flush_all(flag):
    _check(_lib.cuptiActivityFlushAll(int(flag)))


def activity_flush_period(ms):
    _check(_lib.cuptiActivityFlushPeriod(int(ms)))


def activity_get_num_dropped_records(context, stream, out):
    pass


def activity_enable_runtime_api(cbid, on):
    pass


def get_timestamp():
    t = ctypes.c_uint64()
    _lib.cuptiGetTimestamp(ctypes.byref(t))
    return t.value


def get_callback_name(domain, cbid):
    if int(domain) == CallbackDomain.RUNTIME_API and cbid == 7:
        return "cudaMemcpy_v3020"
    if 1 <= cbid <= 20:
        return f"cudaOther{cbid}_v3020"
    raise RuntimeError("CUPTI_ERROR_INVALID_PARAMETER")
