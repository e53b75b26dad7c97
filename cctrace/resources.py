"""Where the files that ship beside the code are: `queries/` and `probes/` sit at the top of a checkout
and inside the package (`cctrace/_data/`) in an installed wheel; one helper finds them in both."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = PACKAGE.parent


def data_dir(name: str) -> Path:
    """The folder `queries` or `probes`: the checkout's own when running from one, else the wheel's copy."""
    here = _CHECKOUT / name
    if here.is_dir() and (_CHECKOUT / "pyproject.toml").is_file():
        return here
    return Path(str(resources.files("cctrace") / "_data" / name))


def profile_path(name: str = "h100") -> Path:
    """A bridge profile bundled with cctrace (the analysis' built-in reference)."""
    return PACKAGE / "trace" / "profiles" / f"{name}.json"
