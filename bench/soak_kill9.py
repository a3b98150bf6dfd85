"""Soak, kill -9 half: `sealab run` killed at random moments, then `sealab run --resume`, many times.

Each trial scaffolds a fresh workspace with a tiny deterministic train.py (a fixed `[budget] steps`),
starts `sealab run --experiments N --proposer offline`, sends SIGKILL after a random delay (seeded:
the delay of trial i is a pure function of `--seed` and i), snapshots the ledger just before the kill,
then runs `sealab run --resume` to the end (or `sealab run` again when the kill came before the run
saved any state, as a user would) and audits the workspace (tests/faults/kit.py `audit`):

* lost records: a record committed before the kill is gone or changed status; an experiment named by
  a ref, a log or an output directory has no record; a finished record was never decided;
* duplicated records: a proposal's commit ran to an end twice, or the baseline more than noise_runs times;
* wrong attributions: a record without its run's tag, an ok record whose hyperparameters are not its
  commit's, an image labelled with another commit, a kept commit off the branch, a discarded one
  not under refs/sealab/discarded/<id>;
* other: branch not at the run's best commit, `sealab verify --all` or SQLite integrity_check not
  clean, a record still `running`, a container left behind, or the resume failing.

`detections` counts the kills that caught an experiment mid-run (a record left `running`) and found it
marked `interrupted` by the next command, its container removed.

(The issue's `bench/soak.py` with its registry of trial kinds did not exist when this was written;
this is the standalone kill -9 soak with the same table columns. Fold it in as a `kill9` kind.)

Usage: .venv/bin/python bench/soak_kill9.py [--trials 50] [--seed 1] [--experiments 2]
                                            [--max-delay 10] [--max-minutes 30] [--markdown]
"""

from __future__ import annotations

import argparse
import platform
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from executor.image.base import build_base  # noqa: E402
from executor.docker_engine import Engine  # noqa: E402
from tests.faults.kit import audit, fast_workspace, kill9, launch, ledger_rows, sealab  # noqa: E402

COLUMNS = ("trials", "detections", "lost records", "wrong attributions", "duplicated records")


def run_saved(root: Path) -> bool:
    """Whether the ledger holds the run's state (read-only)."""
    db = root / ".sealab" / "ledger.db"
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute("SELECT 1 FROM runs WHERE tag = 'soak'").fetchone() is not None
        finally:
            con.close()
    except sqlite3.Error:
        return False


def trial(index: int, args: argparse.Namespace, base, engine: Engine, scratch: Path) -> dict:
    """One kill -9 + resume; returns its counts and a one-line note."""
    rng = random.Random(f"{args.seed}:kill9:{index}")
    delay = rng.uniform(0.2, args.max_delay)
    parent = scratch / f"t{index:03d}"
    parent.mkdir()
    root = fast_workspace(parent, base, steps=args.steps)
    run = ["run", "--experiments", str(args.experiments), "--tag", "soak", "--proposer", "offline"]
    proc = launch(run, root)
    time.sleep(delay)
    before = ledger_rows(root)
    killed = proc.poll() is None
    kill9(proc)
    running = [r["id"] for r in ledger_rows(root) if r["status"] == "running"]
    fresh = not run_saved(root)  # killed before `sealab run` saved anything: the user starts it again
    again = run if fresh else [*run, "--resume"]
    resumed = sealab(*again, cwd=root, timeout=600)
    note = ""
    if resumed.returncode != 0:
        note = f"resume exit {resumed.returncode}: {(resumed.stderr.strip().splitlines() or [''])[-1][:160]}"
    found = audit(root, "soak", before=before, engine=engine)
    by_id = {r["id"]: r for r in found.records}
    detected = bool(running) and all(by_id.get(e, {}).get("status") == "interrupted" for e in running)
    other = found.other + ([note] if note else [])
    for r in found.records:  # this trial's images only: its commits exist nowhere else
        if r.get("image_id"):
            try:
                engine.remove_image(r["image_id"])
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
    shutil.rmtree(parent, ignore_errors=True)
    return {"index": index, "delay": delay, "killed": killed, "fresh": fresh, "interrupted": len(running),
            "detected": detected,
            "lost": len(found.lost), "duplicated": len(found.duplicated),
            "wrong": len(found.wrong_attribution), "other": len(other),
            "note": "; ".join(found.lost + found.duplicated + found.wrong_attribution + other)[:400]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--experiments", type=int, default=2, help="proposals per run (after 1 baseline run)")
    parser.add_argument("--steps", type=int, default=4, help="[budget] steps of the tiny train.py")
    parser.add_argument("--max-delay", type=float, default=10.0, help="kill after uniform(0.2, this) seconds")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="start no trial after this long")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()

    engine = Engine.connect()
    base = build_base(engine, source=None)
    started = time.monotonic()
    rows = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="soak-kill9-") as tmp:
        for i in range(args.trials):
            if time.monotonic() - started > args.max_minutes * 60:
                print(f"time bound reached after {i} trials", file=sys.stderr)
                break
            try:
                row = trial(i, args, base, engine, Path(tmp))
            except KeyboardInterrupt:
                print(f"interrupted during trial {i}: the table counts the {i} trials before it", file=sys.stderr)
                break
            rows.append(row)
            print(f"trial {i:3d} kill at {row['delay']:5.2f} s{'' if row['killed'] else ' (run had ended)'}"
                  f"{' (before the run was saved: started again)' if row['fresh'] else ''}: "
                  f"{row['interrupted']} running -> {'detected' if row['detected'] else '-'}; "
                  f"lost {row['lost']} dup {row['duplicated']} wrong {row['wrong']} other {row['other']}"
                  + (f"  [{row['note']}]" if row["note"] else ""), file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    values = (len(rows), sum(r["detected"] for r in rows), sum(r["lost"] for r in rows),
              sum(r["wrong"] for r in rows), sum(r["duplicated"] for r in rows))
    killed_mid = sum(r["interrupted"] > 0 for r in rows)
    if args.markdown:
        print("| kind | " + " | ".join(COLUMNS) + " | other problems |")
        print("|---|" + "---|" * (len(COLUMNS) + 1))
        print("| kill9 | " + " | ".join(str(v) for v in values) + f" | {sum(r['other'] for r in rows)} |")
    else:
        print("  ".join(f"{c}={v}" for c, v in zip(COLUMNS, values)) + f"  other={sum(r['other'] for r in rows)}")
    print(f"\n{len(rows)} trials in {elapsed / 60:.1f} min (seed {args.seed}); {killed_mid} kills caught an experiment "
          f"running, {sum(not r['killed'] for r in rows)} runs had ended before the kill, "
          f"{sum(r['fresh'] for r in rows)} kills came before the run was saved (started again, not resumed); "
          f"{platform.machine()}, {platform.python_version()}, docker {engine.client.version().get('Version')}")
    bad = any(r["lost"] or r["duplicated"] or r["wrong"] or r["other"] for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
