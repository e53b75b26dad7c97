"""The latency-over-size figure of a bridge profile (`cctrace calibrate --plot`), with matplotlib."""

from __future__ import annotations

from pathlib import Path

from cctrace.trace.profile import ProfileError


def plot_profile(profile: dict, path: Path) -> None:
    """Latency over size per direction and memory kind (median, p10-p90 band, fitted model)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ProfileError("plotting needs matplotlib: pip install 'cctrace[plot]'") from None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    groups: dict[str, list[dict]] = {}
    for r in profile.get("latency", []):
        groups.setdefault(f"{r['direction']}/{r['host_kind']}", []).append(r)
    for key, rows in groups.items():
        xs = [r["bytes"] for r in rows]
        line = ax.plot(xs, [r["host"]["p50_us"] for r in rows], marker="o", ms=3, label=key)[0]
        ax.fill_between(
            xs,
            [r["host"]["p10_us"] for r in rows],
            [r["host"]["p90_us"] for r in rows],
            alpha=0.2,
            color=line.get_color(),
        )
        f = (profile.get("fit") or {}).get(key) or {}
        if f.get("gbps"):
            ax.plot(xs, [f["toll_us"] + b / (f["gbps"] * 1000) for b in xs], ls=":", color=line.get_color(), lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("bytes per copy")
    ax.set_ylabel("host-visible time per copy (µs)")
    m = profile.get("machine") or {}
    cc = (m.get("confidential_computing") or {}).get("ccFeature", "unknown")
    ax.set_title(f"cctrace calibrate — {m.get('device_name', '?')}, driver {m.get('driver_version', '?')}, CC {cc}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="dotted: toll + bytes/bandwidth")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
