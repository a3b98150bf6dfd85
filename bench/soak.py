"""Soak benchmark: randomized, seeded, time-bounded trials against real `sealab run` loops.

    .venv/bin/python bench/soak.py --seed 1 --minutes 30 --trials 200 [--family mutation | --kinds linter,ref_move]

Each trial picks a kind from the registry (`KINDS`) and a moment, does its damage to a real research
loop (real git, real Docker, a tiny deterministic train.py, `[budget] steps` small so a run takes a
few seconds) and waits for sealab to notice. Every record of every loop is then audited:

    detections          the trial's change was reported (a drift event naming its value, or the loop
                        refusing to overwrite a moved ref: exit 4, the ref left where it was put)
    lost records        records left `running`/`interrupted`, or a started experiment with no record
    wrong attributions  an `ok` record whose hyperparameters, image train.py (read back from the
                        image) or image revision label is not its commit's
    duplicated records  one experiment ID twice, or one commit run twice in a loop (baselines aside)

Adding a trial kind (e.g. `kill9`, a kill -9 of the loop followed by `sealab run --resume`):

    @register("kill9", family="orchestrator", weight=1.0)
    def kill9(soak: Soak, trial: Trial) -> None:
        episode = soak.episode()               # the live loop (started if needed)
        ...                                    # os.kill(episode.proc.pid, SIGKILL); episode.wait()
        soak.resume()                          # `sealab run --resume --tag <same tag>`
        trial.detected = ...                   # what "handled" means for this kind
        trial.outcome = "resumed"

`--kinds` chooses among the registered kinds (default: all of them, by weight); the audit runs over
every loop whatever the kinds, so lost and duplicated records are counted for every trial family.
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import git

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEALAB = str(Path(sys.executable).with_name("sealab"))

from tests.conftest import TINY_TRAIN  # noqa: E402  (one tiny train.py for the tests and the soak)

SOAK_POLICY = """
[acceptance]
min_delta = 0.0001
noise_runs = 1
z = 1.0
reason = "soak: one baseline run per loop"
"""

EPISODE_EXPERIMENTS = 10  # experiments per `sealab run` (fewer near the end); a moved ref ends one sooner
DETECT_TIMEOUT_S = 90.0  # a change must be reported within this (a few experiments on a loaded machine)


# -- mutations (shared with tests/attacks) ------------------------------------------------------------
def set_value(text: str, name: str, value) -> str:
    """`NAME = old  # comment` -> `NAME = value  # comment` (the first such line)."""
    return re.sub(rf"^{name} = \S+", f"{name} = {value}", text, count=1, flags=re.M)


def _git_retrying(fn: Callable[[], object], tries: int = 40) -> object:
    """Run a git write, waiting while another process holds index.lock (as a person would retry)."""
    for attempt in range(tries):
        try:
            return fn()
        except git.GitCommandError as exc:
            if "index.lock" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(0.05)
    return None


def mutate(root: Path, kind: str, token: int) -> None:
    """Change the work tree / index / HEAD of `root` the way tools and people do, writing `MARK = token`."""
    repo = git.Repo(root)
    path = root / "train.py"
    if kind == "linter":  # rewrite in place
        path.write_text(set_value(path.read_text(), "MARK", token))
    elif kind == "formatter":  # reformat the whole file (spacing) and change the value
        text = re.sub(r"^(\w+) = ", r"\1 =  ", path.read_text(), flags=re.M)
        path.write_text(re.sub(r"^MARK =  \S+", f"MARK =  {token}", text, count=1, flags=re.M))
    elif kind == "editor":  # write a swap file, rename it over (vim, VS Code)
        tmp = root / ".train.py.swp"
        tmp.write_text(set_value(path.read_text(), "MARK", token))
        os.replace(tmp, path)
    elif kind == "git_add":
        path.write_text(set_value(path.read_text(), "MARK", token))
        _git_retrying(lambda: repo.git.add("train.py"))
    elif kind == "index_only":  # stage other content, leave the work tree alone
        data = set_value(path.read_text(), "MARK", token).encode()
        blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=root, input=data, capture_output=True,
                              check=True).stdout.decode().strip()
        _git_retrying(lambda: repo.git.update_index("--cacheinfo", f"100644,{blob},train.py"))
    elif kind == "checkout":  # another branch, whose train.py has the token
        from agent.gitops import make_commit
        from executor.git_source import open_repo

        commit = make_commit(open_repo(root), repo.head.commit.hexsha,
                             {"train.py": set_value(path.read_text(), "MARK", token)}, f"elsewhere {token}")
        repo.git.branch("-f", f"elsewhere-{token}", commit)
        _git_retrying(lambda: repo.git.checkout("-q", "-f", f"elsewhere-{token}"))
    else:
        raise ValueError(f"unknown mutation {kind}")


# -- the registry of trial kinds ------------------------------------------------------------------------
@dataclass
class Trial:
    index: int
    kind: str
    token: int
    phase: str = ""  # when it struck: "anytime" or "mid-run"
    detected: bool = False
    outcome: str = ""  # e.g. "drift event", "refused: exit 4", "missed: reverted without a report"
    seconds: float = 0.0


@dataclass(frozen=True)
class TrialKind:
    name: str
    family: str  # "mutation", "orchestrator", …
    weight: float
    run: Callable[["Soak", Trial], None]


KINDS: dict[str, TrialKind] = {}


def register(name: str, *, family: str, weight: float = 1.0):
    """Add a trial kind: `fn(soak, trial)` does the damage and fills `trial.detected` / `trial.outcome`."""
    def add(fn: Callable[[Soak, Trial], None]) -> Callable[[Soak, Trial], None]:
        KINDS[name] = TrialKind(name, family, weight, fn)
        return fn
    return add


def _work_tree_mutation(kind: str) -> Callable[[Soak, Trial], None]:
    def run(soak: Soak, trial: Trial) -> None:
        episode = soak.episode(room=3)
        trial.phase = soak.strike_moment(episode)
        if not episode.alive():
            trial.outcome = "void: the loop ended before the change"
            return
        mutate(soak.root, kind, trial.token)
        soak.await_drift(episode, trial)
    return run


for _kind, _weight in (("linter", 3.0), ("formatter", 1.0), ("editor", 2.0), ("git_add", 1.5),
                       ("index_only", 1.0), ("checkout", 1.5)):
    register(_kind, family="mutation", weight=_weight)(_work_tree_mutation(_kind))


@register("ref_move", family="mutation", weight=0.7)
def ref_move(soak: Soak, trial: Trial) -> None:
    """Another process points the loop's branch at a commit the loop never made: the loop must stop
    at its next compare-and-swap (exit 4) and leave the ref where the other process put it."""
    from agent.gitops import make_commit
    from executor.git_source import open_repo

    episode = soak.episode(room=3)
    trial.phase = soak.strike_moment(episode)
    if not episode.alive():
        trial.outcome = "void: the loop ended before the change"
        return
    repo = git.Repo(soak.root)
    elsewhere = make_commit(open_repo(soak.root), repo.commit("main").hexsha,
                            {"train.py": set_value(TINY_TRAIN, "MARK", trial.token)}, f"another process {trial.token}")
    repo.git.update_ref(f"refs/heads/{episode.branch}", elsewhere)
    code = episode.wait(timeout=DETECT_TIMEOUT_S)
    left = repo.git.rev_parse(f"refs/heads/{episode.branch}")
    trial.detected = code == 4 and "moved" in episode.stderr() and left == elsewhere
    trial.outcome = "refused: exit 4, ref kept" if trial.detected else f"missed: exit {code}, ref at {left[:12]}"


KILLED: set[str] = set()  # experiments cut off by kill9 trials: `interrupted` by design, not lost


@register("kill9", family="orchestrator", weight=1.0)
def kill9(soak: Soak, trial: Trial) -> None:
    """kill -9 of the loop at a random moment, then `sealab run --resume`: the resumed process must mark
    the cut-off experiment `interrupted` and remove its container (its commit is kept under
    refs/sealab/discarded/); the audit then finds nothing lost, duplicated or misattributed."""
    episode = soak.episode(room=3)
    trial.phase = soak.strike_moment(episode)
    if not episode.alive():
        trial.outcome = "void: the loop ended before the kill"
        return
    os.kill(episode.proc.pid, signal.SIGKILL)
    episode.wait(timeout=30)
    cut = {r["id"] for r in soak.ledger().records() if r["status"] == "running"}
    KILLED.update(cut)
    resumed = soak.resume()
    end = time.monotonic() + DETECT_TIMEOUT_S
    while time.monotonic() < end:
        status = {r["id"]: r["status"] for r in soak.ledger().records() if r["id"] in cut}
        left = [c for c in soak.engine.api.containers(all=True, filters={"label": "sealab.experiment"})
                if c["Labels"].get("sealab.experiment") in cut]
        if all(s == "interrupted" for s in status.values()) and not left:
            trial.detected = resumed.alive() or resumed.proc.returncode in (0, 4)
            break
        if not resumed.alive():
            break
        time.sleep(0.1)
    trial.outcome = (f"resumed: {len(cut)} interrupted" if cut else "resumed: nothing was running") \
        if trial.detected else f"missed: {len(cut)} cut off, resume exit {resumed.proc.poll()}"


# -- episodes (one `sealab run` each) and the soak ------------------------------------------------------
@dataclass
class Episode:
    tag: str
    branch: str
    proc: subprocess.Popen
    log: Path
    resumed: int = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Soak:
    root: Path
    engine: object
    rng: random.Random
    deadline: float
    seed: int
    trials_left: int = 0
    episodes: list[Episode] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    experiments: dict[str, int] = field(default_factory=dict)  # per loop tag: its --experiments

    @property
    def ledger_path(self) -> Path:
        return self.root / ".sealab" / "ledger.db"

    def ledger(self):
        from executor.ledger import Ledger

        return Ledger(self.ledger_path)

    def current(self) -> Episode | None:
        return self.episodes[-1] if self.episodes and self.episodes[-1].alive() else None

    def episode(self, room: int = 0) -> Episode:
        """The live loop with at least `room` experiments left before it stops (else a new one)."""
        live = self.current()
        if live is not None and room:
            state = self.ledger().run_state(live.tag) or {}
            if self.experiments[live.tag] - state.get("experiments", 0) < room:
                self.finish(live)
                live = None
        if live is None:
            live = self.start()
        self.await_first_run(live)
        return live

    def start(self, resume_tag: str | None = None) -> Episode:
        """`sealab run` on a clean checkout of main (or `--resume` of `resume_tag`)."""
        repo = git.Repo(self.root)
        tag = resume_tag or f"soak-{self.seed}-{len(self.episodes) + 1}"
        if resume_tag is None:
            _git_retrying(lambda: repo.git.checkout("-q", "-f", "main"))
            repo.git.reset("-q", "--hard", "main")
        left_h = max(0.01, (self.deadline - time.monotonic()) / 3600)
        # no more experiments than the trials left need (each needs `room` 3), so the last loop ends soon
        self.experiments.setdefault(tag, min(EPISODE_EXPERIMENTS, self.trials_left + 3))
        args = [SEALAB, "run", "--tag", tag, "--experiments", str(self.experiments[tag]), "--hours", f"{left_h:.4f}",
                "--proposer", "offline"] + (["--resume"] if resume_tag else [])
        log = self.root.parent / f"{tag}.{len(self.episodes)}.stderr"
        with log.open("w") as err:
            proc = subprocess.Popen(args, cwd=self.root, stdout=subprocess.DEVNULL, stderr=err)
        episode = Episode(tag, f"sealab/{tag}", proc, log, resumed=int(resume_tag is not None))
        self.episodes.append(episode)
        return episode

    def resume(self) -> Episode:
        """`sealab run --resume` of the last loop (for orchestrator trial kinds)."""
        return self.start(resume_tag=self.episodes[-1].tag)

    def finish(self, episode: Episode) -> None:
        code = episode.wait(timeout=600)
        if code not in (0, 4):
            self.failures.append(f"{episode.tag}: exit {code}: {episode.stderr()[-400:]}")

    def await_first_run(self, episode: Episode, timeout: float = 180) -> None:
        """Until the loop has a record (its baseline started), so trials strike a working loop."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and episode.alive():
            if any(r.get("run_tag") == episode.tag or r["status"] == "running" for r in self.ledger().records()):
                return
            time.sleep(0.2)

    def running_here(self) -> bool:
        ids = {r["id"] for r in self.ledger().records() if r["status"] == "running"}
        return bool(ids) and any(c["Labels"].get("sealab.experiment") in ids
                                 for c in self.engine.api.containers(filters={"label": "sealab.experiment"}))

    def strike_moment(self, episode: Episode) -> str:
        """Wait for a random moment: any time within 4 s, or while a container runs."""
        if self.rng.random() < 0.5:
            time.sleep(self.rng.uniform(0, 4))
            return "anytime"
        end = time.monotonic() + 60
        while time.monotonic() < end and episode.alive() and not self.running_here():
            time.sleep(0.05)
        time.sleep(self.rng.uniform(0, 1.0))
        return "mid-run"

    def await_drift(self, episode: Episode, trial: Trial) -> None:
        """Wait for a drift event naming the trial's value; classify a miss."""
        needle = f"-> {trial.token}"

        def seen() -> bool:
            return any(needle in c for e in self.ledger().events("drift") for c in e.get("changes", []))

        end = time.monotonic() + DETECT_TIMEOUT_S
        while time.monotonic() < end:
            if seen():
                trial.detected, trial.outcome = True, "drift event"
                return
            if not episode.alive():
                break
            time.sleep(0.1)
        if seen():
            trial.detected, trial.outcome = True, "drift event"
            return
        repo = git.Repo(self.root)
        still = str(trial.token) in (self.root / "train.py").read_text() or \
            str(trial.token) in repo.git.show(":train.py")
        trial.outcome = "missed: still in the tree" if still else "missed: reverted without a report"
        if not still and episode.alive() is False:
            trial.outcome += f" (loop exited {episode.proc.returncode})"


# -- the audit ------------------------------------------------------------------------------------------
def constants(source: str) -> dict:
    tree = ast.parse(source)
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()}


def audit(soak: Soak) -> dict[str, object]:
    """Lost, duplicated and wrongly attributed records over every loop of the soak."""
    from executor.image.docker_build import read_file

    for episode in soak.episodes:
        if episode.alive():
            soak.finish(episode)
    subprocess.run([SEALAB, "status", "--json"], cwd=soak.root, capture_output=True)  # recovers dead owners
    repo = git.Repo(soak.root)
    records = soak.ledger().records()
    tags = {e.tag for e in soak.episodes}
    mine = [r for r in records if r.get("run_tag") in tags or r["status"] in ("running", "interrupted")]
    lost = [r["id"] for r in mine if r["status"] == "running"
            or (r["status"] == "interrupted" and r["id"] not in KILLED)]  # kill9 interrupts on purpose
    for tag in tags:  # an experiment the loop noted as started but never recorded
        pending = (soak.ledger().run_state(tag) or {}).get("pending") or {}
        if pending.get("experiment") and not any(r["id"] == pending["experiment"] for r in records):
            lost.append(pending["experiment"])
    ids = Counter(r["id"] for r in records)
    runs = Counter((r.get("run_tag"), r["commit"]) for r in mine if r.get("decision") not in (None, "baseline"))
    duplicated = [i for i, n in ids.items() if n > 1] + [f"{t}:{c[:12]}" for (t, c), n in runs.items() if n > 1]
    wrong = []
    for r in mine:
        if r["status"] != "ok":
            continue
        source = (repo.commit(r["commit"]).tree / "train.py").data_stream.read().decode()
        ran = r["metrics"].get("hyperparameters", {})
        image_train = read_file(soak.engine.api, r["image_id"], "/workspace/train.py").decode()
        label = soak.engine.image_labels(r["image_id"]).get("org.opencontainers.image.revision")
        if {k: v for k, v in constants(source).items() if k in ran} != ran or image_train != source \
                or label != r["commit"]:
            wrong.append(r["id"])
    verify = subprocess.run([SEALAB, "verify", "--all", "--json"], cwd=soak.root, capture_output=True, text=True)
    return {"records": len(mine), "ok": sum(r["status"] == "ok" for r in mine), "lost": lost, "wrong": wrong,
            "duplicated": duplicated, "verify_exit": verify.returncode}


# -- set-up and the table -------------------------------------------------------------------------------
def make_workspace(where: Path, steps: int):
    from agent.create import init
    from agent.gitops import commit_file
    from executor.image.base import build_base
    from executor.docker_engine import Engine
    from executor.ledger import Ledger

    engine = Engine.connect()
    base = build_base(source=None, wheels_dir=Path(os.environ.get("SEALAB_WHEELS", "/opt/wheels")),
                      engine_client=engine)
    ws = init(where / "ws")
    Ledger(ws.ledger_path).set_base(base)
    policy = where / "soak-policy.toml"
    shipped = Path(__import__("policies").policy_path("default")).read_text()
    policy.write_text(re.sub(r"\[acceptance\][^\[]*", SOAK_POLICY.strip() + "\n\n", shipped, count=1))
    toml = (ws.root / "sealab.toml").read_text()
    toml = re.sub(r"^#?\s*steps = \d+", f"steps = {steps}", toml, count=1, flags=re.M)
    toml = re.sub(r"^grace_seconds = \d+", "grace_seconds = 60", toml, count=1, flags=re.M)
    toml = toml.replace('name = "default"', f'name = "{policy}"')
    commit_file(ws.git, "sealab.toml", toml, "soak: step budget and policy")
    commit_file(ws.git, "train.py", TINY_TRAIN, "soak: tiny deterministic train.py")
    return ws.root, engine


def table(trials: list[Trial], result: dict, markdown: bool) -> str:
    rows = []
    for kind in sorted({t.kind for t in trials}):
        mine = [t for t in trials if t.kind == kind]
        counted = [t for t in mine if not t.outcome.startswith("void")]
        rows.append((kind, len(counted), sum(t.detected for t in counted),
                     sum(not t.detected for t in counted), len([t for t in mine if t.outcome.startswith("void")])))
    counted = [t for t in trials if not t.outcome.startswith("void")]
    head = ("kind", "trials", "detections", "missed", "void")
    total = ("all", len(counted), sum(t.detected for t in counted), sum(not t.detected for t in counted),
             len(trials) - len(counted))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows + [total]]
    else:
        lines = ["  ".join(f"{c:>12}" for c in head)] + ["  ".join(f"{c!s:>12}" for c in r) for r in rows + [total]]
    summary = (f"records audited: {result['records']} ({result['ok']} ok) · lost records: {len(result['lost'])} · "
               f"wrong attributions: {len(result['wrong'])} · duplicated records: {len(result['duplicated'])} · "
               f"verify --all exit {result['verify_exit']}")
    return "\n".join(lines) + "\n\n" + summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=30.0, help="stop starting trials after this")
    parser.add_argument("--trials", type=int, default=200, help="stop after this many trials")
    parser.add_argument("--kinds", default="", help="comma-separated kinds (default: all registered)")
    parser.add_argument("--family", default="", help="only the kinds of this family (e.g. mutation)")
    parser.add_argument("--steps", type=int, default=5, help="[budget] steps of the tiny train.py")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    kinds = [KINDS[k] for k in args.kinds.split(",") if k] or list(KINDS.values())
    kinds = [k for k in kinds if not args.family or k.family == args.family]
    rng = random.Random(args.seed)
    where = args.workdir or Path(tempfile.mkdtemp(prefix="sealab-soak-"))
    where.mkdir(parents=True, exist_ok=True)
    root, engine = make_workspace(where, args.steps)
    started = time.monotonic()
    soak = Soak(root, engine, rng, started + args.minutes * 60, args.seed)
    trials: list[Trial] = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while len(trials) < args.trials and time.monotonic() < soak.deadline - DETECT_TIMEOUT_S / 2:
            kind = rng.choices(kinds, weights=[k.weight for k in kinds])[0]
            soak.trials_left = args.trials - len(trials)
            trial = Trial(len(trials) + 1, kind.name, 10000 + len(trials) + 1)
            t = time.monotonic()
            kind.run(soak, trial)
            trial.seconds = time.monotonic() - t
            trials.append(trial)
            print(f"trial {trial.index:4d} {trial.kind:<11} {trial.phase:<8} {trial.outcome} ({trial.seconds:.1f} s)",
                  file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: auditing what ran so far", file=sys.stderr)
    result = audit(soak)
    minutes = (time.monotonic() - started) / 60
    print(table(trials, result, args.markdown))
    print(f"\n{len(trials)} trials in {minutes:.1f} min, {len(soak.episodes)} loops, seed {args.seed}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs; workspace {root}")
    for failure in soak.failures:
        print(f"loop failure: {failure}")
    for key in ("lost", "wrong", "duplicated"):
        if result[key]:
            print(f"{key}: {', '.join(map(str, result[key]))}")
    missed = [t for t in trials if not t.detected and not t.outcome.startswith("void")]
    for t in missed:
        print(f"missed: trial {t.index} {t.kind} {t.phase}: {t.outcome}")
    bad = result["lost"] or result["wrong"] or result["duplicated"] or result["verify_exit"] != 0
    return 1 if bad or missed or soak.failures else 0


if __name__ == "__main__":
    sys.exit(main())
