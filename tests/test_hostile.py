"""The hostile corpus (tests/hostile/) through load, report, diff, export, query and explore (pilot):
no traceback, one line and the documented exit code for a bad input, no control byte in the output,
nothing written outside the trace directory, PARTIAL wherever data is missing. The figures are printed
by the last test (and by `python -m tests.hostile.run`)."""

import json
import os
from pathlib import Path

import pytest

from tests.hostile.corpus import make
from tests.hostile.run import Tally, _snapshot, bad_arguments, run_cli, run_explore

CHUNKS = 8
TALLY = Tally()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    base, outside, cases = make(root)
    return root, base, outside, cases, _snapshot(root, (root / "cases", root / "out", base))


def _assert_clean(t: Tally) -> None:
    assert not t.tracebacks, t.tracebacks
    assert not t.insecure, t.insecure
    assert not t.silently_wrong, t.silently_wrong
    assert not t.unexpected, t.unexpected
    assert t.clean == t.runs


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_command_on_every_case(corpus, chunk):
    root, base, _, cases, _ = corpus
    t = Tally()
    for case in cases[chunk::CHUNKS]:
        out = root / "out" / case.name
        out.mkdir(parents=True)
        run_cli(t, case, base, out)
        run_explore(t, case)
    _merge(t)
    _assert_clean(t)


def test_bad_arguments_and_crafted_paths(corpus):
    root, base, outside, _, _ = corpus
    out = root / "out" / "_args"
    out.mkdir(parents=True)
    t = Tally()
    bad_arguments(t, base, out, outside)
    _merge(t)
    _assert_clean(t)
    assert not Path("/tmp/cctrace-pwned.csv").exists()


def test_zz_nothing_outside_changed_and_the_figures(corpus):
    root, base, outside, cases, before = corpus
    after = _snapshot(root, (root / "cases", root / "out", base))
    assert after == before  # the planted links' targets, the secret file: untouched, nothing created
    assert sorted(p.name for p in outside.iterdir()) == ["passwd", "victim.txt"]
    figures = TALLY.figures()
    print("\nhostile corpus:", json.dumps(figures))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "hostile.json").write_text(json.dumps(figures, indent=1))
    assert figures["cases_tried"] >= 9 * len(cases)  # every command ran on every case
    assert figures["handled_cleanly"] == figures["cases_tried"]


def _merge(t: Tally) -> None:
    TALLY.runs += t.runs
    TALLY.clean += t.clean
    for k in ("tracebacks", "insecure", "silently_wrong", "unexpected"):
        getattr(TALLY, k).extend(getattr(t, k))


def test_trace_duckdb_is_used_only_as_this_users_cctrace_left_it(tmp_path):
    import duckdb

    from cctrace.analyze.store import FINGERPRINT_SUFFIX, fingerprint_ok, resolve_db
    from tests.hostile.corpus import base_trace

    base = base_trace(tmp_path)
    db = resolve_db(base)
    assert fingerprint_ok(db)
    first = (db.with_name(db.name + FINGERPRINT_SUFFIX)).read_text()
    con = duckdb.connect(str(db))  # changed behind cctrace's back (a view an attacker adds)
    con.execute("CREATE VIEW evil AS SELECT 1")
    con.close()
    assert not fingerprint_ok(db)
    assert resolve_db(base) == db and fingerprint_ok(db)  # rebuilt from the shards
    con = duckdb.connect(str(db), read_only=True)
    assert "evil" not in {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    con.close()
    assert (db.with_name(db.name + FINGERPRINT_SUFFIX)).read_text() != first
