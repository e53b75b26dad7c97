"""`report --html`: the page loaded in a real headless browser (Debian's chromium through playwright),
its charts rendered and its numbers those of `report --json`. Without chromium the test skips, and in
CI (CI set) it fails: scripts/setup.sh installs chromium."""

import json
import os
import shutil

import pytest

from cctrace.ui.html import report_page
from tests.conftest import ROOT, cctrace

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _need_browser():
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install '.[dev]')")
    if not os.path.exists(CHROMIUM):
        missing.append("chromium (apt-get install chromium; scripts/setup.sh does it as root)")
    if missing:
        why = "needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def page_and_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("html")
    trace = d / "serve-bridge"
    shutil.copytree(ROOT / "sample_traces" / "serve-bridge", trace)
    out = d / "report.html"
    r = cctrace("report", str(trace), "--json", "--html", str(out))
    assert r.returncode == 0, r.stderr
    steps = json.loads(cctrace("query", "step_timeline", str(trace), "--format", "json").stdout)
    latency = json.loads(cctrace("query", "latency_by_size", str(trace), "--format", "json").stdout)
    return out, json.loads(r.stdout), steps, latency


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def test_report_page_renders_the_reports_numbers(page_and_report, browser):
    out, rep, steps, latency = page_and_report
    ctx = browser.new_context()
    page = ctx.new_page()
    asked = []
    page.on("request", lambda req: asked.append(req.url))
    page.goto(out.as_uri())
    assert asked == [out.as_uri()]  # nothing fetched at view time: one self-contained file
    # category bars: one per category and the unexplained rest, each the report's ms, widths in proportion
    bars = page.eval_on_selector_all(
        "#category-bars g.cat",
        "els => els.map(e => ({cat: e.dataset.category, ms: +e.dataset.lostMs, "
        "w: e.querySelector('rect.bar').getBBox().width, text: e.querySelector('text.value').textContent}))",
    )
    want = {c["category"]: c["lost_ms"] for c in rep["categories"]} | {"unexplained": rep["unexplained_ms"]}
    assert {b["cat"]: b["ms"] for b in bars} == want
    full = max(bars, key=lambda b: b["ms"])
    assert full["w"] > 100
    for b in bars:
        assert b["text"].startswith(f"{b['ms']:,.3f} ms")
        assert b["w"] == pytest.approx(full["w"] * b["ms"] / full["ms"], abs=0.6)
    # per-step timeline: a group per step (numbered from 1 as step_timeline numbers them), drawn
    drawn = page.eval_on_selector_all(
        "#step-chart g.step",
        "els => els.map(e => ({step: +e.dataset.step, us: +e.dataset.stepUs, h: e.getBBox().height, "
        "lost: [...e.querySelectorAll('rect.lost')].map(r => [r.dataset.category, r.getBBox().height])}))",
    )
    assert len(drawn) == rep["steps"] == len(steps) == 300
    assert [d["step"] for d in drawn] == [s["step"] for s in steps] == list(range(1, 301))
    assert [d["us"] for d in drawn] == [s["step_us"] for s in steps]
    assert all(d["h"] > 0 for d in drawn)
    for d, s in zip(drawn, steps, strict=True):  # stacked heights in proportion to each category's µs
        for cat, h in d["lost"]:
            assert h == pytest.approx(d["h"] * s[f"{cat}_us"] / s["step_us"], rel=0.01, abs=0.05)
    assert sum(1 for d in drawn for cat, _ in d["lost"] if cat == "small_crossings") == 300
    # crossing-cost plot: a dot per measured size, a model line per series, inside the plot
    dots = page.eval_on_selector_all(
        "#cost-plot circle.median", "els => els.map(e => [e.dataset.series, +e.dataset.bytes, +e.dataset.medianUs])"
    )
    assert sorted(dots) == sorted(
        [f"{p['copy_kind']} {p['host_kind']}", p["size_bytes"], p["median_us"]] for p in latency
    )
    assert page.eval_on_selector_all("#cost-plot polyline.model", "els => els.length") == len(rep["cost_model"])
    box = page.eval_on_selector("#cost-plot", "e => e.getBoundingClientRect().height")
    assert box > 300
    # top offenders: the report's top rows, as printed; the call sites table, one row per site (at most 15)
    sites = [s for s in rep["callsites"] if s.get("callsite")]
    assert sites and page.eval_on_selector_all("table.callsites tr:has(td)", "els => els.length") == min(15, len(sites))
    assert "serve.py" in page.inner_text("table.callsites")
    # the sample's host burst, in the report's own words
    assert rep["slow_steps"]["steps"] > 0 and f"{rep['slow_steps']['steps']} step(s)" in page.inner_text("#slow-steps")
    text = page.inner_text("body")
    assert f"{rep['top']['small_crossings'][0]['excess_ms']}" in text
    assert page.inner_text("#window-ms") == str(rep["window_ms"])
    assert "emulated bridge b300-tdx" in page.inner_text("#injected")
    ctx.close()


def test_call_sites_render_when_the_report_has_them(page_and_report, browser, tmp_path):
    _, rep, steps, latency = page_and_report
    rep = dict(rep, command=["python", "serve\x1b[31m.py"])
    rep["callsites"] = [
        {"callsite": "serve.py:88", "function": "decode", "category": "small_crossings", "lost_ms": 285.8},
        {"callsite": "serve.py:120", "function": "sample", "category": "sync_waits", "lost_ms": 5.2},
    ]
    html = report_page(rep, steps, latency)
    assert "\x1b" not in html and "serve\\x1b[31m.py" in html  # a control character shows as an escape
    path = tmp_path / "sites.html"
    path.write_text(html)
    page = browser.new_page()
    page.goto(path.as_uri())
    rows = page.eval_on_selector_all("table.callsites tr", "els => els.map(e => e.innerText)")
    assert len(rows) == 3 and "serve.py:88" in rows[1] and "285.8" in rows[1]
    page.close()


def test_html_refuses_a_link(page_and_report, tmp_path):
    out, *_ = page_and_report
    (tmp_path / "target").write_text("keep")
    (tmp_path / "r.html").symlink_to(tmp_path / "target")
    r = cctrace("report", str(out.parent / "serve-bridge"), "--html", str(tmp_path / "r.html"))
    assert r.returncode == 2 and "symbolic link" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "target").read_text() == "keep"
