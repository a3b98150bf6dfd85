"""The capped log: what a run prints, stored within [resources] log_mb, head and tail kept, the cut marked."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings, strategies as st

from executor.capped_log import TAIL_BYTES, CappedLog, cut_marker


def stored(tmp_path, chunks, cap):
    path = tmp_path / "run.log"
    path.unlink(missing_ok=True)
    tail = CappedLog(path, cap).extend(chunks).close()
    return path.read_bytes(), tail


@settings(max_examples=300, deadline=None, derandomize=True)
@given(chunks=st.lists(st.binary(max_size=300), max_size=20), cap=st.integers(2, 700))
def test_head_and_tail_are_kept_and_the_cut_is_marked(tmp_path_factory, chunks, cap):
    tmp_path = tmp_path_factory.mktemp("log")
    whole = b"".join(chunks)
    data, tail = stored(tmp_path, chunks, cap)
    if len(whole) <= cap:
        assert data == whole
    else:
        head, ring = cap // 2, cap - cap // 2
        assert data == whole[:head] + cut_marker(len(whole) - cap, cap) + whole[len(whole) - ring:]
    assert tail == data[-TAIL_BYTES:]
    assert not (tmp_path / "run.log.tail").exists()


def test_without_a_path_only_the_tail_is_kept():
    log = CappedLog(None, 10)
    log.extend([b"x" * TAIL_BYTES, b"the end\n"])
    assert log.close() == (b"x" * TAIL_BYTES + b"the end\n")[-TAIL_BYTES:] and log.total == TAIL_BYTES + 8


def test_memory_does_not_grow_with_the_output(tmp_path):
    """64 MB of output through a 1 MB cap: the Python heap peaks at a few chunks, not the output."""
    chunk = b"step 1 loss 3.14159\n" * 3277  # about 64 KB
    tracemalloc.start()
    try:
        log = CappedLog(tmp_path / "run.log", 1 << 20)
        for _ in range(1024):
            log.write(chunk)
        tail = log.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (tmp_path / "run.log").stat().st_size < (1 << 20) + 200 and tail.endswith(b"3.14159\n")
    assert peak < 4 * TAIL_BYTES, peak


def test_a_failed_stream_leaves_the_head_and_no_ring_file(tmp_path):
    def chunks():
        yield b"a" * 100
        raise OSError("engine went away")

    log = CappedLog(tmp_path / "run.log", 50)
    try:
        log.extend(chunks())
    except OSError:
        log.abandon()
    assert (tmp_path / "run.log").read_bytes() == b"a" * 25 and not (tmp_path / "run.log.tail").exists()
