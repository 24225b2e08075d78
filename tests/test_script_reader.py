"""A dump's COPY data is counted and copied in bulk: the counts and copies must be what a
line-by-line reading gives, wherever a megabyte boundary falls, and a damaged file must
still be refused before anything runs."""

from __future__ import annotations

import gzip
import random

import pytest

from playbook import script_reader
from playbook.backup_kinds import scan_script
from playbook.errors import BackupUnusable
from playbook.script_reader import ScriptReader


def _rows(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["hello", "\\N", "a\\tb", "caf\u00e9", "\\\\.", "\\.x", "line\\nbreak", "\u65e5\u672c"]
    return [f"{i}\t{rng.choice(words)}\t{rng.random()}" for i in range(count)]


def _script(blocks: dict[str, list[str]], newline: str = "\n", last_newline: bool = True) -> str:
    parts = ["-- PostgreSQL database dump", "SET client_encoding = 'UTF8';"]
    for table, rows in blocks.items():
        parts.append(f"COPY {table} (id, body, score) FROM stdin;")
        parts.extend(rows)
        parts.append("\\.")
        parts.append("")
    parts.append("-- PostgreSQL database dump complete")
    text = newline.join(parts)
    return text + newline if last_newline else text


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_rows_counted_in_bulk_equal_a_line_by_line_count(tmp_path, monkeypatch, chunk, newline):
    monkeypatch.setattr(script_reader, "CHUNK", chunk)
    blocks = {"public.a": _rows(500, 1), "public.empty": [], "public.b": _rows(37, 2)}
    path = tmp_path / "dump.sql"
    path.write_bytes(_script(blocks, newline).encode())

    scan = scan_script(path)

    assert scan.rows == {"public.a": 500, "public.empty": 0, "public.b": 37}
    assert scan.complete


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_a_copy_block_copied_in_bulk_is_byte_for_byte_the_original(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(script_reader, "CHUNK", chunk)
    text = _script({"public.a": _rows(300, 3)})
    path = tmp_path / "dump.sql.gz"
    path.write_bytes(gzip.compress(text.encode()))
    copied = bytearray()
    statements = []
    with ScriptReader(path) as reader:
        for line in reader:
            copied += line.encode()
            statements.append(line)
            if line.startswith("COPY "):
                rows, ended = reader.copy_block(copied.extend)
                assert (rows, ended) == (300, True)

    assert bytes(copied) == text.encode()
    assert len(statements) == text.count("\n") - 301  # the rows and their "\." line


def test_the_end_marker_as_the_last_line_without_newline_ends_the_block(tmp_path):
    path = tmp_path / "dump.sql"
    path.write_text("COPY public.a (id) FROM stdin;\n1\n2\n\\.", encoding="utf-8")
    with ScriptReader(path) as reader:
        reader.readline()
        assert reader.copy_block() == (2, True)
        assert reader.readline() == ""


def test_a_script_cut_inside_copy_data_is_not_complete(tmp_path):
    text = _script({"public.a": _rows(100, 4)})
    path = tmp_path / "dump.sql"
    data = text.encode()
    path.write_bytes(data[: data.index(b"\n50\t") + 4])

    scan = scan_script(path)

    assert scan.rows["public.a"] == 51  # 50 whole rows and the cut one
    assert not scan.complete


def test_bytes_that_are_not_utf8_inside_copy_data_refuse_the_backup(tmp_path):
    text = _script({"public.a": _rows(20, 5)}).encode()
    damaged = text.replace(b"hello", b"hel\xfflo", 1) if b"hello" in text else None
    assert damaged is not None
    path = tmp_path / "dump.sql"
    path.write_bytes(damaged)

    with pytest.raises(BackupUnusable, match="cannot be read to the end"):
        scan_script(path)


def test_a_truncated_gzip_download_is_refused(tmp_path):
    data = gzip.compress(_script({"public.a": _rows(5000, 6)}).encode())
    path = tmp_path / "dump.sql.gz"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(BackupUnusable, match="truncated or damaged"):
        scan_script(path)
