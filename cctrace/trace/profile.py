"""Bridge profiles (`cctrace calibrate` writes them, the analysis reads them): what a crossing, an async
call and an allocation normally cost on one machine. Reading one needs nothing but the JSON."""

from __future__ import annotations

import json
from pathlib import Path

from cctrace.resources import profile_path

FORMAT = "cctrace-bridge-profile/1"
DEFAULT_PROFILE = profile_path("h100")


class ProfileError(RuntimeError):
    """A file that is not a usable bridge profile."""


def load_profile(path: Path) -> dict:
    """A bridge profile written by `cctrace calibrate`; ProfileError says why a file is not one."""
    try:
        profile = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ProfileError(f"cannot read the bridge profile {path}: {e}") from None
    if not isinstance(profile, dict):
        raise ProfileError(f"{path} is not a bridge profile (a JSON object from `cctrace calibrate`)")
    return profile


def params_from_profile(profile: dict) -> dict:
    """The analysis parameters a profile sets: what a normal async call and a crossing cost here."""
    out: dict = {}
    blocking = profile.get("blocking") or {}
    alone = (blocking.get("alone") or {}).get("call", {})
    if alone.get("p90_us"):
        # an async call that takes twice the normal slow end of its cost here is stalled
        out["normal_call_us"] = round(max(2 * alone["p90_us"], 5.0), 1)
    fit = profile.get("fit") or {}
    bw = [v.get("gbps") for k, v in fit.items() if k.endswith("/pinned") and v.get("gbps")]
    if bw:
        out["default_gbps"] = round(min(bw), 2)
    return out


def native_gbps(path: Path = DEFAULT_PROFILE) -> dict[str, float]:
    """Native pinned-copy bandwidth (GB/s) per direction that a profile measured; 55 where it has none."""
    out = {"h2d": 55.0, "d2h": 55.0}
    try:
        fit = json.loads(Path(path).read_text())["fit"]
        for d in out:
            out[d] = float(fit[f"{d}/pinned"]["gbps"]) or out[d]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return out
