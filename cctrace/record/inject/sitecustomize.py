"""Injected by `cctrace record` through PYTHONPATH into every Python process of the traced command.

It starts the tracer, then runs the sitecustomize that the user's environment would have run
without cctrace, so an existing sitecustomize keeps working. Any failure is reported in one
line and the program runs on untraced.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _cctrace_boot() -> None:
    home = os.environ.get("CCTRACE_HOME")
    if home and home not in sys.path:
        sys.path.append(home)  # last, so cctrace's folder never shadows the program's modules
    try:
        from cctrace.record.tracer import boot_from_env

        boot_from_env()
    except Exception as e:  # noqa: BLE001 - tracing must never stop the program
        if not os.environ.get("CCTRACE_QUIET"):
            sys.stderr.write(f"cctrace: not tracing pid {os.getpid()}: {type(e).__name__}: {e}\n")


def _chain_user_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_cctrace_boot()
_chain_user_sitecustomize()
