"""Where a bug of sealab's leaves its trace: the user sees one line naming the file, never a traceback."""

from __future__ import annotations

import os
import traceback
from pathlib import Path


def keep_trace() -> str:
    """Write the current exception's trace to ~/.cache/sealab/last-error.txt (or, if that cannot be
    written, a temporary file); says where, or that it could not be kept."""
    import tempfile

    trace = traceback.format_exc()
    places = (Path.home() / ".cache" / "sealab" / "last-error.txt",
              Path(tempfile.gettempdir()) / f"sealab-last-error-{os.getuid()}.txt")
    for crash in places:
        try:
            crash.parent.mkdir(parents=True, exist_ok=True)
            crash.write_text(trace)
            return f"trace in {crash}"
        except OSError:
            continue
    return "the trace could not be written: ~/.cache and the temporary directory are not writable"
