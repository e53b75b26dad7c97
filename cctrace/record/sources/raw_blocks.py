"""The block framing of the raw files cctrace's C helpers append to (the CUPTI shim's `cupti.<pid>.cuptiraw`,
the interposer's `interpose.<pid>.ipraw`): [u64 magic][u64 bytes][payload], read back whole or not at all."""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterator
from pathlib import Path

HEADER = struct.Struct("<QQ")


def read_blocks(path: Path, magics: Collection[int]) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(magic, payload, None) per whole block; a damaged tail (truncated, or a marker not in `magics`)
    yields (0, None, problem) and stops."""
    with open(path, "rb") as f:
        while True:
            head = f.read(HEADER.size)
            if not head:
                return
            if len(head) < HEADER.size:
                yield 0, None, f"truncated block header at byte {f.tell() - len(head)}"
                return
            magic, size = HEADER.unpack(head)
            if magic not in magics:
                yield 0, None, f"bad block marker at byte {f.tell() - HEADER.size}"
                return
            data = f.read(size)
            if len(data) < size:
                yield 0, None, f"last block truncated ({len(data)} of {size} bytes)"
                return
            yield magic, data, None
