"""The one table of attribution categories: what each is called, how it is shown, which canned query
details it, its code in SQL, which emulator injections it explains, and the remedies to advise.

Everything else derives from here: the report's rows and advice, the UI's labels, the codes the SQL
tags its rows with (bound as variables `c_<name>`), the columns of `step_timeline` and the ground
truth's mapping of injection kinds onto categories (bound as the temp table `categories`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa


@dataclass(frozen=True)
class Remedy:
    """One piece of advice, with what makes it not fit a trace.

    `done_when`: a fact of the trace (a column of `trace_facts`, queries/_advice.sql) under which the
    trace already does this; `needs`: one without which it does not help. `measured`: the change in steps/s this remedy measured per calibrated
    machine (the profile's device name), with where it was measured; worse (< 0) means never advise it
    there."""

    key: str
    text: str
    done_when: str | None = None
    needs: str | None = None  # a fact of the trace without which this remedy does not apply
    measured: dict[str, tuple[float, str]] = field(default_factory=dict)
    cupti_only: bool = False  # needs what only CUPTI sees (memory kinds, streams): not for host-only traces
    host_text: str | None = None  # the advice in the words a host-only trace supports, where they differ


@dataclass(frozen=True)
class Category:
    name: str
    code: int  # the small integer the SQL tags its (many) rows with
    label: str
    query: str  # the canned query that details it
    remedies: tuple[Remedy, ...]
    injected_kinds: tuple[str, ...] = ()  # bridge_injections kinds whose time this category explains
    # measured from GPU-side copy times only (CUPTI's): on a trace whose copies carry host call times (the
    # driver interposer's, host probes') it is not measured, rather than zero
    gpu_timed: bool = False


REMEDIES_MEASURED = "run_serve.py remedies --reps 5 --steps 300, H100, 2026-11-26 (benchmarks/README.md)"


def _staging(text: str) -> Remedy:
    """H2D copies moved to an idle staging stream (serve.py --staging-stream): one remedy, two categories."""
    return Remedy(
        "staging_stream",
        text,
        done_when="staging_stream",
        measured={"NVIDIA H100 80GB HBM3": (-8.8, REMEDIES_MEASURED)},
        cupti_only=True,
    )


CATEGORIES: tuple[Category, ...] = (
    Category(
        "small_crossings",
        1,
        "small crossings",
        "small_crossings",
        (
            Remedy(
                "fewer_readbacks",
                "most of it is small readbacks (.item()/.tolist() checks): read several values back at once, "
                "or check less often (every k steps)",
                needs="readbacks_dominate",
            ),
            Remedy(
                "packed_h2d",
                "batch small copies: pack per-step inputs into one pinned buffer and copy it once",
                done_when="packed_h2d",
                measured={"NVIDIA H100 80GB HBM3": (63.7, REMEDIES_MEASURED)},
                host_text="batch small copies: pack per-step inputs into one buffer and copy it once (host "
                "probes cannot tell pinned from pageable memory: record with CUPTI to see which copies are which)",
            ),
            Remedy(
                "fewer_crossings",
                "H2D is already one copy per step: what is left is each crossing's fixed toll; cross less "
                "often (several steps' inputs at once, fewer readbacks)",
            ),
        ),
        ("toll", "bandwidth"),
    ),
    Category(
        "stream_concurrency",
        2,
        "lost stream concurrency",
        "stream_concurrency",
        (
            _staging("stage H2D copies on one idle stream instead of spreading them over busy streams"),
            Remedy(
                "one_copy_stream",
                "copies on several streams wait for each other at the bridge: issue fewer, larger copies "
                "(pack them) rather than more streams",
            ),
        ),
        ("serialize",),
        gpu_timed=True,
    ),
    Category(
        "async_stalls",
        3,
        "async stalls",
        "async_stalls",
        (
            _staging("async calls block here: move H2D to a staging stream and keep launches off the copy path"),
            Remedy(
                "fewer_async_copies",
                "async calls block here: pack the step's copies into one so fewer calls wait, and issue "
                "them before the step's launches",
                done_when="packed_h2d",
            ),
        ),
        ("async_block",),
    ),
    Category(
        "alloc_and_copy",
        4,
        "alloc-and-copy",
        "alloc_copy",
        (
            Remedy(
                "preallocate",
                "avoid per-step allocation: reuse preallocated (pinned) buffers instead of torch.tensor(list)",
            ),
        ),
    ),
    Category(
        "sync_waits",
        5,
        "sync waits / readbacks",
        "sync_waits",
        (
            Remedy(
                "async_readback",
                "drain D2H readbacks (.tolist()/.item()) on a worker thread, or overlap them with the next step",
                done_when="async_readback",
                measured={"NVIDIA H100 80GB HBM3": (14.4, REMEDIES_MEASURED)},
            ),
            Remedy(
                "overlap_syncs",
                "readbacks already leave the launching thread: the waits left are syncs; launch the next "
                "step before waiting on this one",
            ),
        ),
    ),
)

BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}
NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)
LABELS: dict[str, str] = {c.name: c.label for c in CATEGORIES}


def code_variables() -> dict[str, int]:
    """The SQL's category codes, bound as variables: `c_small_crossings` = 1, ..."""
    return {f"c_{c.name}": c.code for c in CATEGORIES}


def arrow() -> pa.Table:
    """The table as the SQL sees it (temp table `categories`): code, name, label, query, injected kinds."""
    return pa.table(
        {
            "c": pa.array([c.code for c in CATEGORIES], pa.uint8()),
            "category": [c.name for c in CATEGORIES],
            "label": [c.label for c in CATEGORIES],
            "query": [c.query for c in CATEGORIES],
            "injected_kinds": pa.array([list(c.injected_kinds) for c in CATEGORIES], pa.list_(pa.string())),
        }
    )


def measured(name: str, facts: dict[str, bool]) -> bool:
    """Whether the trace can measure this category at all (`facts`: trace_facts)."""
    return facts["gpu_times"] or not BY_NAME[name].gpu_timed


def advise(name: str, facts: dict[str, bool], device: str | None, host_only: bool) -> str | None:
    """The first remedy of a category that fits the trace: not what it already does, not one that
    measured worse on the calibrated machine, nothing that needs CUPTI's view on a host-only trace."""
    for r in BY_NAME[name].remedies:
        if (r.done_when and facts.get(r.done_when)) or (r.needs and not facts.get(r.needs)):
            continue
        if device and r.measured.get(device, (0.0, ""))[0] < 0:
            continue
        if host_only and r.cupti_only:
            continue
        return (r.host_text or r.text) if host_only else r.text
    return None
