"""A run's output, streamed to its log file under a cap: the first half of the cap and the last half are
kept, the cut between them marked with the number of bytes dropped. Nothing holds the whole output in
memory: the head goes straight to the file, the tail turns in a ring file beside it, and only
`TAIL_BYTES` (the end the summary and the crash reason are read from) come back to the caller.

Whatever a run prints (400 MB in a tight loop, hours of per-step lines) costs the orchestrator a chunk
of memory and at most the cap on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Iterable

TAIL_BYTES = 1 << 20  # the end of the output handed back for the summary and the last line
COPY_CHUNK = 1 << 20


def cut_marker(dropped: int, cap: int) -> bytes:
    """The line that stands where output was dropped (pure)."""
    return (f"\n[sealab: {dropped} bytes of output dropped here: the log keeps the first and the last "
            f"{cap // 2} bytes ([resources] log_mb = {cap >> 20})]\n").encode()


class CappedLog:
    """Writes chunks of output to `path` (None: nowhere, only the tail is kept) keeping head and tail
    within `cap` bytes. Use: `write()` each chunk, then `close()`, which returns the last TAIL_BYTES."""

    def __init__(self, path: Path | None, cap: int) -> None:
        if cap < 2:
            raise ValueError(f"log cap must be at least 2 bytes, not {cap}")
        self.path, self.cap = path, cap
        self.head_cap, self.ring_cap = cap // 2, cap - cap // 2
        self.total = 0  # bytes seen
        self._ring_pos = 0  # next write position in the ring (bytes written to it, modulo ring_cap)
        self._ring_used = 0
        self._tail = bytearray()  # without a path: the last TAIL_BYTES only
        self._head: BinaryIO | None = None
        self._ring: BinaryIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._head = path.open("wb")
            self._ring = path.with_name(path.name + ".tail").open("w+b")

    @property
    def dropped(self) -> int:
        return max(0, self.total - self.cap)

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self._head is None:
            self._tail += chunk
            del self._tail[:-TAIL_BYTES]
            return
        written = self._head.tell()
        if written < self.head_cap:
            part, chunk = chunk[:self.head_cap - written], chunk[self.head_cap - written:]
            self._head.write(part)
        if chunk:
            self._ring_write(chunk[-self.ring_cap:])

    def _ring_write(self, data: bytes) -> None:
        assert self._ring is not None
        while data:
            self._ring.seek(self._ring_pos)
            part = data[:self.ring_cap - self._ring_pos]
            self._ring.write(part)
            data = data[len(part):]
            self._ring_pos = (self._ring_pos + len(part)) % self.ring_cap
            self._ring_used = min(self.ring_cap, self._ring_used + len(part))

    def extend(self, chunks: Iterable[bytes]) -> CappedLog:
        for chunk in chunks:
            if chunk:
                self.write(chunk)
        return self

    def close(self) -> bytes:
        """Finish the file (head, the cut marker if anything was dropped, the ring in order) and return
        the output's last TAIL_BYTES as the file has them."""
        if self._head is None or self._ring is None:
            return bytes(self._tail)
        head, ring = self._head, self._ring
        if self.dropped:
            head.write(cut_marker(self.dropped, self.cap))
        # the ring, oldest first: from the write position to the end (once wrapped), then from 0
        spans = [(self._ring_pos, self.ring_cap), (0, self._ring_pos)] if self._ring_used == self.ring_cap \
            else [(0, self._ring_used)]
        for start, end in spans:
            ring.seek(start)
            left = end - start
            while left > 0:
                block = ring.read(min(COPY_CHUNK, left))
                if not block:
                    break
                head.write(block)
                left -= len(block)
        ring.close()
        os.unlink(ring.name)
        size = head.tell()
        head.close()
        with open(head.name, "rb") as f:
            f.seek(max(0, size - TAIL_BYTES))
            return f.read()

    def abandon(self) -> None:
        """Close without finishing (an error mid-stream): the head stays, the ring file is removed."""
        for f in (self._head, self._ring):
            if f is not None and not f.closed:
                f.close()
        if self._ring is not None:
            Path(self._ring.name).unlink(missing_ok=True)
