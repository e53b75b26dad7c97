"""The bridge emulator's ground truth as the manifest keeps it: what each process injected, summed."""

from __future__ import annotations


def sum_injected(processes: list[dict]) -> dict | None:
    """The whole run's ground truth: every process's injected counters added up."""
    total: dict = {}
    spec = None
    for p in processes:
        b = (p.get("sources") or {}).get("bridge") or {}
        inj = b.get("injected")
        if not inj:
            continue
        spec = spec or b.get("spec")
        for k, v in inj.items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
            elif k == "toll_by_log2_bytes":
                hist = total.setdefault(k, {"h2d": {}, "d2h": {}})
                for d, buckets in v.items():
                    for bk, c in buckets.items():
                        hist[d][bk] = hist[d].get(bk, 0) + c
    if spec is None:
        return None
    return {"spec": spec, "injected": total}


def injected_summary(block: dict | None) -> dict | None:
    """A manifest's `bridge_emulation` in brief (preset, counts and ms per kind), for the views."""
    if not block:
        return None
    inj = block.get("injected") or {}
    kinds = ("toll", "bandwidth", "serialize", "async_block")
    return {
        "spec": (block.get("spec") or {}).get("name"),
        "tolls": inj.get("toll_count", 0),
        "counts": {k: inj.get(k + "_count", 0) for k in kinds},
        "injected_ms": {k: round(inj.get(k + "_ns", 0) / 1e6, 3) for k in kinds},
    }
