import pyarrow as pa
import pytest

from cctrace.trace import schema as S


def test_every_table_has_pid_and_source_and_ns_times():
    for name, sch in S.TABLES.items():
        assert "pid" in sch.names, name
        if name not in S.FROM_MANIFEST:
            assert "source" in sch.names, name
        for f in sch:
            if f.name.endswith("_ns"):
                assert f.type == pa.int64(), (name, f.name)


def test_rows_to_batch_fills_missing_columns_with_nulls():
    b = S.rows_to_batch("copies", {"pid": [1, 2], "bytes": [10, 20], "copy_kind": ["HtoD", "DtoH"]})
    assert b.schema == S.schema("copies")
    assert b.column("bytes").to_pylist() == [10, 20]
    assert b.column("stream_id").null_count == 2


def test_rows_to_batch_rejects_wrong_types():
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        S.rows_to_batch("copies", {"pid": ["not a number"]})


def test_unknown_table_names_the_known_ones():
    with pytest.raises(KeyError, match="copies"):
        S.schema("nope")


def test_shard_names_round_trip():
    from pathlib import Path

    from cctrace.trace.shards import parse_shard_name

    assert parse_shard_name(Path(S.shard_name("api_calls", 42))) == ("api_calls", 42)
    assert parse_shard_name(Path("manifest.json")) is None
    assert parse_shard_name(Path("bogus.12.arrows")) is None
