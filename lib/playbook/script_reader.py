"""Reading a dump script fast: its statements a line at a time, its COPY data in bulk.

A database dump is mostly COPY data: a 5 GB download from the dashboard is a few hundred
lines of statements around 5 GB of rows. Statements are read as lines (strict UTF-8).
The rows of a COPY block are never split into Python lines: they are counted (and copied
when asked) a megabyte at a time up to the block's ``\\.`` line, still checked as UTF-8,
at the speed of ``bytes.count`` (about twenty times faster than iterating lines, which is
what took a 1 M-row table's scan over a second). A file that is truncated, damaged or not
UTF-8 raises :class:`BackupUnusable`, as reading it line by line did.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import BackupUnusable

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
_END = b"\\."  # a COPY block's last line, alone on its line


def _open_binary(path: Path):
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def unreadable(path: Path, exc: BaseException) -> BackupUnusable:
    return BackupUnusable(
        f"The backup {path.name} cannot be read to the end ({type(exc).__name__}: {exc}): "
        "it is truncated or damaged. Nothing was changed.",
        next_step="download the backup again from the Supabase dashboard, or choose "
        "another one.",
    )


class ScriptReader:
    """``for line in reader``: the script's lines (newline kept); after a ``COPY ... FROM
    stdin;`` line, :meth:`copy_block` takes the block's data in bulk instead. Use as a
    context manager: read errors become BackupUnusable."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._raw = None
        self._buf = b""
        self._pos = 0
        self._eof = False

    def __enter__(self) -> ScriptReader:
        try:
            self._raw = _open_binary(self.path)
        except OSError as exc:
            raise unreadable(self.path, exc) from None
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        self._raw.close()
        if isinstance(exc, (EOFError, OSError, zlib.error, UnicodeDecodeError)):
            raise unreadable(self.path, exc) from None
        return False

    def __iter__(self) -> Iterator[str]:
        while line := self.readline():
            yield line

    def _fill(self) -> bool:
        """Append the next chunk (dropping what was consumed); False at the end."""
        if self._eof:
            return False
        chunk = self._raw.read(CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._buf = self._buf[self._pos:] + chunk
        self._pos = 0
        return True

    def readline(self) -> str:
        """The next line with its newline; "" at the end of the script."""
        while (end := self._buf.find(b"\n", self._pos)) < 0:
            if not self._fill():
                line = self._buf[self._pos:]
                self._pos = len(self._buf)
                return line.decode("utf-8")
        line = self._buf[self._pos:end + 1]
        self._pos = end + 1
        return line.decode("utf-8")

    def _consume(self, end: int, out: Callable[[bytes], object] | None) -> None:
        data = self._buf[self._pos:end]
        if not data.isascii():
            data.decode("utf-8")  # whole lines, so no character is cut in two
        if out is not None:
            out(data)
        self._pos = end

    def _terminator(self) -> int:
        """Where the ``\\.`` line starts in the buffer, or -1 (not in it, or not whole
        yet: the caller reads on)."""
        buf, pos = self._buf, self._pos
        start = pos if buf.startswith(_END, pos) else -1
        search = pos
        while True:
            if start < 0:
                found = buf.find(b"\n" + _END, search)
                if found < 0:
                    return -1
                start = found + 1
            after = buf[start + 2:start + 4]
            if after[:1] == b"\n" or after == b"\r\n":
                return start
            if (after in (b"", b"\r")) and not self._eof:
                return -1  # the line is not whole yet
            if not after or after == b"\r":
                return start  # "\." as the file's last line, without a newline
            search, start = start + 1, -1

    def copy_block(self, out: Callable[[bytes], object] | None = None) -> tuple[int, bool]:
        """The COPY data from here up to and including its ``\\.`` line, handed to ``out``
        in slices of whole lines when given: (rows, True), or (rows, False) when the script
        ends before the ``\\.`` line (a partial last line counts as a row)."""
        rows = 0
        while True:
            start = self._terminator()
            if start >= 0:
                newline = self._buf.find(b"\n", start)
                rows += self._buf.count(b"\n", self._pos, start)
                self._consume(newline + 1 if newline >= 0 else len(self._buf), out)
                return rows, True
            cut = self._buf.rfind(b"\n", self._pos) + 1  # whole lines only
            if cut > self._pos:
                rows += self._buf.count(b"\n", self._pos, cut)
                self._consume(cut, out)
            if not self._fill():
                if self._terminator() >= 0:
                    continue  # "\\." as the file's last line, without a newline
                rest = len(self._buf) - self._pos
                self._consume(len(self._buf), out)
                return rows + (1 if rest else 0), False
