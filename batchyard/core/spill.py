"""A sequence written once and read back once, in memory while it is small, then on disk.

A submit decides which tasks to queue in the same pass that reads them (a table parsed, each task
fingerprinted) and sends them after it has shown its plan. Holding a million task definitions took
912 MiB; reading the table a second time doubled the submit's time. Past ``keep`` items they go to
an unlinked temporary file (mode 0600, gone when closed), compressed in blocks of pickles: memory
stays bounded and nothing is parsed twice. Only this process reads what it wrote.
"""

from __future__ import annotations

import pickle
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any, Generic, TypeVar

T = TypeVar("T")
_LENGTH = struct.Struct("<I")


class Spill(Generic[T]):
    """``append`` items, then iterate them once, in order; use as a context manager (closes the file)."""

    def __init__(self, *, keep: int, block: int = 5000, encode: Callable[[T], Any] | None = None,
                 decode: Callable[[Any], T] | None = None) -> None:
        """``encode``/``decode``: what an item is pickled as, and back (a dataclass's own pickling costs
        several times a tuple's: 4.7 s per 100,000 tasks spilled, measured)."""
        self.keep, self.block = keep, block
        self.encode, self.decode = encode, decode
        self.count = 0
        self._held: list[T] = []
        self._file: IO[bytes] | None = None

    def append(self, item: T) -> None:
        self._held.append(item)
        self.count += 1
        if self._file is not None and len(self._held) >= self.block:
            self._write()
        elif self._file is None and len(self._held) > self.keep:
            self._file = tempfile.TemporaryFile(prefix="batchyard-spill-")  # noqa: SIM115 (closed by close())
            while len(self._held) >= self.block:
                head, self._held = self._held[:self.block], self._held[self.block:]
                self._write(head)

    def _write(self, items: list[T] | None = None) -> None:
        assert self._file is not None
        chosen = self._held if items is None else items
        encoded = chosen if self.encode is None else [self.encode(item) for item in chosen]
        block = zlib.compress(pickle.dumps(encoded, pickle.HIGHEST_PROTOCOL), 1)
        self._file.write(_LENGTH.pack(len(block)) + block)
        if items is None:
            self._held = []

    def __iter__(self) -> Iterator[T]:
        if self._file is not None:
            self._file.seek(0)
            while header := self._file.read(_LENGTH.size):
                (size,) = _LENGTH.unpack(header)
                items = pickle.loads(zlib.decompress(self._file.read(size)))  # noqa: S301 (our own bytes)
                yield from items if self.decode is None else map(self.decode, items)
        yield from self._held

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._held = []

    def __enter__(self) -> Spill[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
