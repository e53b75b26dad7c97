"""benchmarks/run_serve.py's table: the slowdown by median steps/s and, when every run reports it, each run's
fastest decile of steps (p10 step time) against the baseline's, with exact values on made-up runs."""

from __future__ import annotations

import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import run_serve as R

SUITE = R.SUITES["overhead"]


def _runs(p10: bool) -> dict[str, list[R.Run]]:
    def run(sps: float, ms: float) -> R.Run:
        return R.Run(sps, 1000 / sps, None, ms if p10 else None)

    return {
        "plain": [run(1000, 0.50), run(800, 0.52), run(1200, 0.48)],
        "default": [run(900, 0.56), run(700, 0.60), run(950, 0.50)],
    }


def test_slowdown_and_p10_against_the_baseline() -> None:
    rows = {r["config"]: r for r in R.table(SUITE, _runs(p10=True))}
    assert rows["default"]["slowdown_pct"] == 100 * (1000 - 900) / 1000
    assert rows["default"]["p10_longer_pct"] == 100 * (0.56 - 0.50) / 0.50
    assert rows["plain"]["p10_longer_pct"] == 0.0
    lo, hi = rows["default"]["p10_longer_ci95_pct"]
    assert lo <= rows["default"]["p10_longer_pct"] <= hi
    text = R.render(list(rows.values()), "plain")
    assert "fastest decile of steps" in text and "+12.0%" in text


def test_no_p10_section_when_runs_do_not_report_it() -> None:
    rows = R.table(SUITE, _runs(p10=False))
    assert all("step_ms_p10" not in r for r in rows)
    assert "fastest decile" not in R.render(rows, "plain")
