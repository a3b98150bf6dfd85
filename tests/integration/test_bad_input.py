"""Bad input, generated (Hypothesis, a fixed seed and a fixed budget of examples): every subcommand with
malformed arguments, committed sealab.toml files that are wrong in every way, and archives that are
truncated, reordered or hold malformed records under valid checksums. Whatever comes in: no traceback,
never exit 70 (a bug of ours), an exit code the README's table allows for that command, stderr one
`sealab: error:` line when it fails, and no record of the ledger lost or changed.

The CLI runs in this process (click's CliRunner: the same `main` as the console script), so that
thousands of cases fit CI's time. Arguments run against an engine that is not there (DOCKER_HOST
points at no socket: nothing can start); sealab.toml and archives against the real one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, seed, settings, strategies as st

from agent.cli import main
from tests.conftest import write_stored

README = Path(__file__).resolve().parents[2] / "README.md"
FAST = settings(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COUNTS: dict[str, int] = {}
CODES: dict[tuple[str, int], int] = {}  # (command, exit code) → cases
SEALED: list[bytes] = []  # the generated sealab.toml files that were valid


def readme_exit_codes() -> dict[str, set[int]]:
    """`command` → the exit codes its row of the README's table lists, with 2, 3 and 5, which the paragraph
    under the table gives every command (bad input, engine unavailable, ledger problem)."""
    table = {}
    for line in README.read_text().splitlines():
        found = re.match(r"\| `sealab ([a-z]+)[^|]*(?:\\\|[^|]*)*\|.*\| ([^|]+) \|$", line)
        if found:
            table[found[1]] = {int(n) for n in re.findall(r"\b(\d+)\b", found[2])} | {2, 3, 5}
    return table


EXIT_CODES = readme_exit_codes()


SCRATCH: list[Path] = []  # the working directory of every invocation (what `init x`, `demo x` or `-o x` make goes there)


def invoke(args: list[str], env: dict[str, str] | None = None):
    with contextlib.chdir(SCRATCH[0]):
        return CliRunner().invoke(main, args, env=env, catch_exceptions=True)


def check(result, command: str, what: str) -> None:
    said = result.stderr if hasattr(result, "stderr") else result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{what}: {type(result.exception).__name__}: {result.exception}"
    assert result.exit_code != 70 and "Traceback" not in said + result.stdout, f"{what}: {said[-500:]}"
    assert result.exit_code in EXIT_CODES[command], f"{what}: exit {result.exit_code} not in {EXIT_CODES[command]}: {said[-300:]}"
    if result.exit_code not in (0, 1):
        errors = [line for line in said.splitlines() if line.startswith("sealab: error:")]
        assert len(errors) == 1, f"{what}: {said[-500:]}"
    COUNTS[command] = COUNTS.get(command, 0) + 1
    CODES[command, result.exit_code] = CODES.get((command, result.exit_code), 0) + 1


def snapshot(ledger_path: Path) -> dict[str, str]:
    import sqlite3

    with sqlite3.connect(ledger_path) as db:
        return dict(db.execute("SELECT id, record FROM experiments"))


RECORD = {"id": "20261207-000000-aaaaaaaa", "commit": "c" * 40, "status": "ok", "image_id": "sha256:" + "e" * 64,
          "run_spec": {"budget_s": 1.0}, "metrics": {"val_bpb": 3.5}, "created_at": "2026-12-07T00:00:00.000Z"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, base_image):
    """A workspace on the offline base with two records in its ledger (what every case must leave as it was)."""
    from agent.create import init
    from executor.ledger import Ledger

    SCRATCH[:] = [tmp_path_factory.mktemp("bad-input-cwd")]
    ws = init(tmp_path_factory.mktemp("bad-input") / "ws")
    ledger = Ledger(ws.ledger_path)
    ledger.set_base(base_image)
    write_stored(ledger, RECORD)
    write_stored(ledger, {**RECORD, "id": "20261207-000001-bbbbbbbb", "status": "crash", "reason": "exit code 1"})
    ledger.close()
    return ws.root


# -- arguments ---------------------------------------------------------------------------------------------
NASTY = st.one_of(  # never an absolute path: what `init`, `report --out` or `export -o` make stays in SCRATCH
    st.text(max_size=30).filter(lambda v: not v.startswith("/")), st.integers(-10**30, 10**30).map(str), st.sampled_from(
        ["", "-", "--", "-1", "0", "nan", "inf", "1e999", "HEAD~99", "deadbeef", "sha256:", "sha256:" + "0" * 64,
         "../..", "missing/x", "\x00", "é", "--json", "-C", "a" * 300, "repo@sha256:zz", "localhost:1/r"]))
COMMANDS = sorted(main.commands)


@st.composite
def argv(draw):
    name = draw(st.sampled_from(COMMANDS))
    command = main.commands[name]
    options = [o for p in command.params for o in p.opts if o.startswith("-")] + ["--bogus", "-x"]
    args = [name]
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 2))
        if kind == 0:
            args.append(draw(st.sampled_from(options)))
        args.append(draw(NASTY))
    if name == "serve":  # a valid host and port would serve until stopped: the port is always out of range
        args += ["--port", str(draw(st.sampled_from([-1, 65536, 10**9])))]
    return args


@seed(20261207)
@settings(FAST, max_examples=1300)
@given(args=argv())
def test_generated_arguments(workspace, tmp_path_factory, args):
    before = snapshot(workspace / ".sealab" / "ledger.db")
    result = invoke(["-C", str(workspace), *args], env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    check(result, args[0], f"sealab {args!r}")
    after = snapshot(workspace / ".sealab" / "ledger.db")
    assert {k: after.get(k) for k in before} == before


# -- sealab.toml -------------------------------------------------------------------------------------------
TABLES = {"metric": ["name", "direction"], "budget": ["train_seconds", "grace_seconds", "steps"], "run": ["seed"],
          "resources": ["memory_mb", "cpus", "pids", "gpus", "tmp_mb", "home_mb", "out_mb", "log_mb", "tree_mb"],
          "policy": ["name"], "base": ["wheels", "torch", "from"], "harness": ["command", "metric_source"],
          "data": ["dirs"], "backend": ["name"]}
VALUES = st.one_of(st.integers(-2, 2), st.integers(-10**18, 10**18), st.sampled_from(
    ["0", "-1", "1e400", "nan", "inf", "-inf", "true", '""', '"x"', "[]", "[1, 2]", "{}", '{a = 1}', "1.5", "0.0",
     "9223372036854775808", '"\\u0000"', "'''\n'''", "2026-12-07"]).map(lambda v: v)).map(str)


@st.composite
def toml_text(draw):
    """A sealab.toml: the scaffold's, with a few keys set to generated values, tables dropped or doubled,
    unknown keys added, or its bytes broken."""
    lines: dict[str, dict[str, str]] = {"metric": {"name": '"val_bpb"', "direction": '"minimize"'},
                                        "budget": {"train_seconds": "1", "grace_seconds": "40"}}
    for _ in range(draw(st.integers(1, 4))):
        table = draw(st.sampled_from([*TABLES, "bogus"]))
        key = draw(st.sampled_from(TABLES.get(table, []) + ["unknown_key"]))
        lines.setdefault(table, {})[key] = draw(VALUES)
    for table in draw(st.lists(st.sampled_from(list(lines)), max_size=2)):
        lines.pop(table, None)
    text = "\n".join(f"[{t}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()) for t, keys in lines.items())
    data = text.encode()
    breakage = draw(st.integers(0, 5))
    if breakage == 0:
        data = data + b"\n[budget]\ntrain_seconds = 2\n"  # a table twice
    elif breakage == 1:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"\x00", b"[", b"="])) + data[at:]
    elif breakage == 2:
        data = data[:draw(st.integers(0, len(data)))]  # cut anywhere
    return data


@seed(20261207)
@settings(FAST, max_examples=400)
@given(data=toml_text())
def test_generated_sealab_toml(workspace, engine, data):
    """The committed sealab.toml is read by `seal` (the engine is real; nothing runs): refused in one
    line (exit 2) or sealed; never a traceback."""
    from agent.gitops import commit_paths
    from executor.git_source import open_repo

    before = snapshot(workspace / ".sealab" / "ledger.db")
    (workspace / "sealab.toml").write_bytes(data)
    commit_paths(open_repo(workspace), ["sealab.toml"], "generated settings")
    result = invoke(["-C", str(workspace), "seal", "--json"])
    check(result, "seal", f"sealab.toml {data!r}")
    assert snapshot(workspace / ".sealab" / "ledger.db") == before
    if result.exit_code == 0:  # valid settings: sealed; the image goes, so the engine does not fill up
        SEALED.append(data)
        engine.remove_image(json.loads(result.stdout)["image_id"])


# -- archives ----------------------------------------------------------------------------------------------
def archive_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                 st.text(max_size=10)),
                       lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)


@st.composite
def archive(draw):
    """An archive of a new record: with its records, bases or manifest malformed under checksums that
    match, its members reordered or missing, or its bytes cut short."""
    record = {**RECORD, "id": "20261207-000009-cccccccc"}
    field = draw(st.sampled_from(["id", "commit", "status", "image_id", "run_spec", "metrics", "created_at", None]))
    records: object = [record]
    if field is not None:
        choice = draw(st.integers(0, 2))
        if choice == 0:
            record.pop(field)
        else:
            record[field] = draw(JSONISH)
    if draw(st.integers(0, 5)) == 0:
        records = draw(JSONISH)
    bases: object = draw(st.sampled_from([[], [{"image_id": 1}], {"x": 1}, "bases"]))
    images = archive_bytes([])
    manifest: dict = {"format": 1, "sealab": "0", "experiments": [record.get("id")],
                      "images": [record.get("image_id")]}
    body = {"records.json": json.dumps(records).encode(), "bases.json": json.dumps(bases).encode(),
            "images.tar": images}
    manifest["sha256"] = {name: sha(content) for name, content in body.items()}
    for key in draw(st.lists(st.sampled_from(["format", "experiments", "images", "sha256"]), max_size=2)):
        if draw(st.booleans()):
            manifest.pop(key, None)
        else:
            manifest[key] = draw(JSONISH)
    members = [("manifest.json", json.dumps(manifest).encode()), *body.items()]
    members = draw(st.permutations(members))
    members = members[:len(members) - draw(st.integers(0, 1))]
    data = archive_bytes(members)
    if draw(st.integers(0, 3)) == 0:
        data = data[:draw(st.integers(0, len(data)))]
    return data


@seed(20261207)
@settings(FAST, max_examples=300)
@given(data=archive())
def test_generated_archives(workspace, engine, tmp_path_factory, data):
    """`sealab import` of a generated archive (the engine is real): refused in one line, nothing added."""
    before = snapshot(workspace / ".sealab" / "ledger.db")
    path = tmp_path_factory.mktemp("archive") / "bad.tar"
    path.write_bytes(data)
    result = invoke(["-C", str(workspace), "import", str(path)])
    check(result, "import", f"archive of {len(data)} bytes")
    assert result.exit_code != 0 and snapshot(workspace / ".sealab" / "ledger.db") == before


def test_every_subcommand_was_driven():
    """Run last in this module: the generated cases reached every subcommand, 2,000 of them at least."""
    if not COUNTS:
        pytest.skip("run with the generated tests above")
    assert set(COMMANDS) <= set(COUNTS) and sum(COUNTS.values()) >= 2000, COUNTS
    print(f"\ngenerated bad-input cases: {sum(COUNTS.values())} ({json.dumps(dict(sorted(COUNTS.items())))}); "
          f"valid sealab.toml among them: {len(SEALED)}")
    print("| command | cases | exit codes seen (cases) | README allows |\n|---|---|---|---|")
    for name in COMMANDS:
        seen = ", ".join(f"{code} ({n})" for (c, code), n in sorted(CODES.items()) if c == name)
        print(f"| `{name}` | {COUNTS[name]} | {seen} | {', '.join(map(str, sorted(EXIT_CODES[name])))} |")
