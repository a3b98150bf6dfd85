"""Declarative policies (pure): loading, proposal checks, noise floor, keep/discard and stopping."""

import hashlib
import re
import tomllib
from pathlib import Path

import pytest

from executor.config import DEFAULT_TOML
from executor.types import Resources, RunSpec
from policies import (
    POLICY_DIR,
    PolicyError,
    added_lines,
    changed_lines,
    check_proposal,
    check_run_spec,
    decide,
    load_policy,
    noise_floor,
    parse_policy,
    policy_digest,
    should_stop,
)

TRAIN = "\n".join([
    "import torch",
    "",
    "SCALAR_LR = 0.5",
    "BATCH_SIZE = 16",
    "",
    "def train(h):",
    "    model = torch.nn.Linear(4, 4)",
    "    model.eval()",
    "    return model",
    "",
])
SPEC = RunSpec()
DEFAULT_TEXT = (POLICY_DIR / "default.toml").read_text()


@pytest.fixture(scope="module")
def default():
    return load_policy("default")


@pytest.fixture(scope="module")
def strict():
    return load_policy("strict")


def with_line(line: str, text: str = TRAIN) -> str:
    """`text` with `line` inserted after the hyperparameters."""
    lines = text.split("\n")
    return "\n".join(lines[:4] + [line] + lines[4:])


def check(policy, changes, proposed_spec=None):
    return check_proposal(policy, changes, current_spec=SPEC, proposed_spec=proposed_spec)


def rule_index(policy, reason_start: str) -> str:
    """The rule name of the forbidden entry whose reason starts with `reason_start`."""
    matches = [i for i, f in enumerate(policy.forbidden) if f.reason.startswith(reason_start)]
    assert len(matches) == 1, reason_start
    return f"forbidden[{matches[0]}]"


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("name", ["default", "strict"])
def test_shipped_policies_load(name):
    """Both shipped policies load by name, with the documented scope and their own file digest."""
    policy = load_policy(name)
    assert policy.name == name
    assert policy.scope.editable == ("train.py",)
    assert {"prepare.py", "program.md", "Dockerfile.train", "sealab.toml", ".sealab/*", "data/*"} \
        <= set(policy.scope.protected)
    assert policy.gates.protected_paths and policy.gates.raise_limits and not policy.run.network
    data = (POLICY_DIR / f"{name}.toml").read_bytes()
    assert policy_digest(policy) == "sha256:" + hashlib.sha256(data).hexdigest()


def test_shipped_policy_values():
    """The default and strict policies carry the documented numbers, strict being tighter."""
    d, s = load_policy("default"), load_policy("strict")
    assert (d.diff.max_changed_lines, s.diff.max_changed_lines) == (200, 60)
    assert (d.acceptance.min_delta, d.acceptance.noise_runs, d.acceptance.z) == (0.001, 3, 2.0)
    assert (d.stop.max_consecutive_crashes, d.stop.plateau) == (5, 30)
    assert d.stop.max_experiments is None and d.stop.max_hours is None and d.stop.max_cost_usd is None
    assert s.run.max_budget_s < d.run.max_budget_s and s.run.max_memory_mb < d.run.max_memory_mb
    assert len(s.forbidden) > len(d.forbidden)
    assert policy_digest(d) != policy_digest(s)


@pytest.mark.parametrize("name", ["default", "strict"])
def test_every_rule_table_has_a_reason(name):
    """Every table of a shipped policy file, each [[forbidden]] entry included, has a non-empty reason."""
    raw = tomllib.loads((POLICY_DIR / f"{name}.toml").read_text())
    tables = [v for k, v in raw.items() if k != "forbidden"] + raw["forbidden"]
    assert len(tables) >= 7 + 5
    assert all(isinstance(t.get("reason"), str) and t["reason"].strip() for t in tables)
    assert all(reason for _, reason in load_policy(name).rules())


def test_shipped_train_py_is_not_flagged(default, strict):
    """The scaffold's own train.py, proposed as a new file, trips no forbidden pattern of either policy."""
    source = (Path(__file__).parents[2] / "executor" / "scaffold" / "train.py").read_text()
    lines = added_lines(None, source)
    assert len(lines) > 100
    for policy in (default, strict):
        assert [(n, text) for n, text in lines for f in policy.forbidden if f.regex.search(text)] == []


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.replace('reason = "one experiment is one idea', 'why = "one experiment is one idea'),
     "unknown key diff.why (known: max_changed_lines, reason)"),
    (lambda t: t.replace('reason = "one experiment is one idea: small diffs keep results attributable '
                         'and reviewable"\n', ""), "[diff] has no reason"),
    (lambda t: t.replace('reason = "no network: an experiment depends only on its sealed inputs"\n', ""),
     "forbidden[0] has no reason"),
    (lambda t: t.replace('reason = "one experiment is one idea', 'reason = "   "\n#'), "must be one non-empty line"),
    (lambda t: t + "\n[extra]\nreason = 'x'\n", "unknown section [extra]"),
    (lambda t: t.replace("max_changed_lines = 200", "max_changed_lines = 'many'"),
     "diff.max_changed_lines has the wrong type: expected an integer, found 'many'"),
    (lambda t: t.replace("max_changed_lines = 200", "max_changed_lines = 0"),
     "diff.max_changed_lines must be more than 0: 0"),
    (lambda t: t.replace("network = false", "network = true"), "network = true is not supported"),
    (lambda t: t.replace("\\b(?:socket", "(?:socket(", 1), "forbidden[0].pattern is not a valid regex"),
    (lambda t: t.replace('editable = ["train.py"]', 'editable = ["train.py", "prepare.py"]'),
     "both editable and protected"),
    (lambda t: t.replace("[gates]", "[gates"), "not valid TOML"),
])
def test_bad_policy_is_a_one_line_error(tmp_path, edit, fragment):
    """A malformed policy file fails to load with one line naming the file and the problem."""
    path = tmp_path / "bad.toml"
    text = edit(DEFAULT_TEXT)
    assert text != DEFAULT_TEXT
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    message = str(info.value)
    assert fragment in message and str(path) in message and "\n" not in message
    assert info.value.exit_code == 2


def test_missing_section_is_refused():
    """A policy without one of the rule sections does not load."""
    text = DEFAULT_TEXT.split("\n[gates]\n")[0]
    with pytest.raises(PolicyError, match=r"missing section \[gates\]"):
        parse_policy(text, source="cut.toml")


def test_unknown_policy_name_lists_the_known_ones():
    """An unknown policy name is a PolicyError that lists the shipped policies."""
    with pytest.raises(PolicyError, match=r"no policy 'lenient' \(known: default, strict\)"):
        load_policy("lenient")
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy("/nonexistent/policy.toml")


@pytest.mark.parametrize("name", ["default", "strict"])
def test_a_rule_table_without_its_reason_does_not_load(name):
    """Every rule table of a shipped policy, each [[forbidden]] entry and the optional [retry] included,
    fails to load once its reason line is removed, and the message names that table."""
    text = (POLICY_DIR / f"{name}.toml").read_text()
    raw = tomllib.loads(text)
    checked = []
    for reason in re.finditer(r"^reason = .*\n", text, flags=re.M):
        headers = re.findall(r"^\[\[?(\w+)\]\]?$", text[:reason.start()], flags=re.M)
        table = f"forbidden[{headers.count('forbidden') - 1}]" if headers[-1] == "forbidden" else f"[{headers[-1]}]"
        with pytest.raises(PolicyError) as info:
            parse_policy(text[:reason.start()] + text[reason.end():], source="cut.toml")
        assert str(info.value) == f"cut.toml: {table} has no reason (every rule must say why it exists)"
        checked.append(table)
    assert len(checked) == len(set(checked)) == len(raw) - 1 + len(raw["forbidden"]) >= 12


@pytest.mark.parametrize("old, new, line", [
    ('editable = ["train.py"]', 'editable = "train.py"',
     "scope.editable has the wrong type: expected an array, found 'train.py'"),
    ('editable = ["train.py"]', 'editable = ["train.py", ""]', "scope.editable[1] must not be empty"),
    ("max_pids = 4096", "max_pids = 4096.5", "run.max_pids has the wrong type: expected an integer, found 4096.5"),
    ("max_budget_s = 3600", "max_budget_s = '1h'",
     "run.max_budget_s has the wrong type: expected a number, found '1h'"),
    ("network = false", "network = 0", "run.network has the wrong type: expected a boolean, found 0"),
    ("z = 2.0", "z = nan", "acceptance.z must be a finite number, not nan"),
    ("max_gpus = 8", "max_gpus = -1", "run.max_gpus must not be negative: -1"),
    ('action = "restore"', 'action = "ignore"', "drift.action must be 'restore' or 'halt', not 'ignore'"),
])
def test_a_wrong_value_in_a_policy_names_expected_and_found(old, new, line):
    """Policy files go through the same validator as sealab.toml: a wrong type or value is one line with
    the file, the dotted field, what it must be and what was found."""
    text = DEFAULT_TEXT.replace(old, new, 1)
    assert text != DEFAULT_TEXT
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="p.toml")
    assert str(info.value) == f"p.toml: {line}"


def test_a_single_forbidden_table_asks_for_an_array_of_them():
    """[forbidden] written as one table, not an array of tables, says which form it must have."""
    start, end = DEFAULT_TEXT.index("[[forbidden]]"), DEFAULT_TEXT.index("\n[run]\n")
    text = DEFAULT_TEXT[:start] + '[forbidden]\npattern = "x"\nreason = "r"\n' + DEFAULT_TEXT[end:]
    with pytest.raises(PolicyError, match=r"^p\.toml: \[forbidden\] has the wrong type: expected an array of "
                                          r"tables \(\[\[forbidden\]\]\), found \{'pattern': 'x', 'reason': 'r'\}$"):
        parse_policy(text, source="p.toml")


def test_policy_error_is_a_sealab_error_with_exit_code_2():
    """PolicyError is part of sealab's error tree (bad input, exit 2), so whatever catches SealabError
    catches an unusable policy too."""
    from executor.errors import SealabError

    with pytest.raises(SealabError) as info:
        load_policy("lenient")
    assert isinstance(info.value, PolicyError) and info.value.exit_code == 2
    assert (info.value.source, info.value.problem) == (str(POLICY_DIR / "lenient.toml"),
                                                       "no policy 'lenient' (known: default, strict)")


def test_a_bad_policy_stops_sealab_run_with_one_line_and_exit_2(tmp_path, monkeypatch):
    """`sealab run` in a workspace whose sealab.toml names a broken policy file: the generic SealabError
    handler of the CLI prints one line naming the file and the problem, and exits 2 (no traceback)."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from agent import cli

    bad = tmp_path / "mine.toml"
    bad.write_text(DEFAULT_TEXT.replace("max_changed_lines = 200", "max_changed_lines = 0"))
    workspace = SimpleNamespace(config=lambda: SimpleNamespace(policy=str(bad)))
    monkeypatch.setattr(cli, "_open", lambda ctx, **kw: (workspace, None, None))  # no Docker, no ledger
    result = CliRunner().invoke(cli.main, ["run", "--proposer", "offline"])
    assert result.exit_code == 2, result.output
    assert result.output == f"sealab: error: {bad}: diff.max_changed_lines must be more than 0: 0\n"


# ---------------------------------------------------------------- proposals


def test_plain_train_py_edit_is_allowed(default):
    """A small edit of train.py with nothing forbidden is allowed."""
    verdict = check(default, {"train.py": (TRAIN, TRAIN.replace("0.5", "0.3"))})
    assert verdict.action == "allow" and verdict.allowed and verdict.rule is None


@pytest.mark.parametrize("path", ["prepare.py", "program.md", "Dockerfile.train", ".sealab/ledger.db",
                                  "data/train.bin"])
def test_protected_path_edit_is_parked(default, path):
    """An edit to a protected path is parked for a human, naming the gate and the path."""
    verdict = check(default, {"train.py": (TRAIN, TRAIN.replace("0.5", "0.3")), path: ("a\n", "b\n")})
    assert verdict.action == "park" and verdict.rule == "gates.protected_paths"
    assert path in verdict.reason and default.gates.reason in verdict.reason and "\n" not in verdict.reason


def test_protected_path_is_rejected_when_the_gate_is_off():
    """With gates.protected_paths = false, a protected edit is rejected by scope instead of parked."""
    policy = parse_policy(DEFAULT_TEXT.replace("protected_paths = true", "protected_paths = false"))
    verdict = check(policy, {"prepare.py": ("a\n", "b\n")})
    assert (verdict.action, verdict.rule) == ("reject", "scope.editable")


@pytest.mark.parametrize("path", ["notes.txt", "train2.py", "sub/train.py", "../train.py", "/work/train.py"])
def test_non_editable_path_is_rejected(default, path):
    """A path that is neither editable nor protected (or escapes the workspace) is rejected by scope."""
    verdict = check(default, {path: (None, "hello\n")})
    assert verdict.action == "reject" and verdict.rule == "scope.editable"
    assert default.scope.reason in verdict.reason


def test_unchanged_entries_and_dot_paths(default):
    """An entry whose old and new contents are equal is ignored; `./train.py` is train.py."""
    assert check(default, {"prepare.py": ("same\n", "same\n"), "./train.py": (TRAIN, TRAIN + "# x\n")}).allowed


def test_changed_lines_counts_added_and_removed():
    """changed_lines counts added plus removed lines, a replaced line counting twice."""
    assert changed_lines(None, "a\nb\nc\n") == 3
    assert changed_lines("a\nb\nc\n", None) == 3
    assert changed_lines("a\nb\nc\n", "a\nB\nc\n") == 2
    assert changed_lines("a\nb\n", "a\nb\n") == 0


def test_oversize_diff_is_rejected(default, strict):
    """A proposal changing more lines than diff.max_changed_lines is rejected; at the limit it passes."""
    def grow(n):
        return TRAIN + "".join(f"X{i} = {i}\n" for i in range(n))
    assert check(default, {"train.py": (TRAIN, grow(200))}).allowed
    verdict = check(default, {"train.py": (TRAIN, grow(201))})
    assert verdict.action == "reject" and verdict.rule == "diff.max_changed_lines"
    assert "201 changed lines > 200" in verdict.reason
    assert check(strict, {"train.py": (TRAIN, grow(61))}).rule == "diff.max_changed_lines"


FORBIDDEN = [
    ("no network", "import socket"),
    ("no network", "import urllib.request"),
    ("no network", "r = requests.get('http://x')"),
    ("no network", "from http.client import HTTPConnection"),
    ("no network", "import httpx"),
    ("no child processes", "import subprocess"),
    ("no child processes", "os.system('ls')"),
    ("no child processes", "out = os.popen('id').read()"),
    ("no child processes", "os.execv('/bin/sh', ['sh'])"),
    ("no child processes", "import pty"),
    ("no evaluating strings", "x = eval('1+1')"),
    ("no evaluating strings", "exec(code)"),
    ("no evaluating strings", "c = compile(src, 'f', 'exec')"),
    ("no evaluating strings", "m = __import__('os')"),
    ("no evaluating strings", "import importlib"),
    ("no reading the environment", "key = os.environ['HOME']"),
    ("no reading the environment", "key = os.getenv('HOME')"),
    ("no files outside", "data = open('/etc/passwd').read()"),
    ("no files outside", "p = Path(\"/home/sealab/x\")"),
    ("the held-out split", "v = np.fromfile(VAL_DIR + '/val.bin')"),
    ("the harness is protected", "prepare.evaluate_bpb = lambda *a: 0.0"),
]


@pytest.mark.parametrize("reason_start, line", FORBIDDEN)
def test_forbidden_pattern_on_added_line_is_rejected(default, reason_start, line):
    """A forbidden construct on an added line is rejected by its own category's rule, quoting the line."""
    verdict = check(default, {"train.py": (TRAIN, with_line(line))})
    assert verdict.action == "reject" and verdict.rule == rule_index(default, reason_start)
    assert verdict.reason.startswith(reason_start) and "train.py:5:" in verdict.reason
    assert line.strip()[:40] in verdict.reason


@pytest.mark.parametrize("reason_start, line", FORBIDDEN)
def test_forbidden_text_on_unchanged_or_removed_line_is_not_flagged(default, reason_start, line):
    """The same text on an unchanged line or on a removed line is not flagged."""
    old = with_line(line)
    assert check(default, {"train.py": (old, old.replace("0.5", "0.3"))}).allowed
    assert check(default, {"train.py": (old, TRAIN)}).allowed


@pytest.mark.parametrize("line", [
    "    model.eval()", "model = torch.compile(model)", "f = open('/tmp/scratch.txt', 'w')",
    "if prepare.VERSION == 2: pass", "LR_SCHEDULE = 'cosine'  # evaluation happens in the harness",
])
def test_harmless_lookalikes_are_allowed(default, line):
    """Method calls and names that merely resemble forbidden ones are allowed by the default policy."""
    assert check(default, {"train.py": (TRAIN, with_line(line))}).allowed


@pytest.mark.parametrize("line", [
    "import ctypes", "sys.modules['prepare'].x = 1", "setattr(h, 'budget', 1e9)",
    "open('out.txt', 'w').write('x')", "torch.save(model, 'm.pt')", "import threading",
])
def test_strict_forbids_more(default, strict, line):
    """The strict policy rejects constructs the default policy lets through."""
    changes = {"train.py": (TRAIN, with_line(line))}
    assert check(default, changes).allowed
    verdict = check(strict, changes)
    assert verdict.action == "reject" and verdict.rule.startswith("forbidden[")


# ---------------------------------------------------------------- run limits


def test_raising_train_seconds_in_sealab_toml_is_parked(default):
    """A sealab.toml change that raises train_seconds is parked by the raise_limits gate, saying by how much."""
    new = DEFAULT_TOML.replace("train_seconds = 60", "train_seconds = 120")
    verdict = check(default, {"sealab.toml": (DEFAULT_TOML, new)})
    assert verdict.action == "park" and verdict.rule == "gates.raise_limits"
    assert "budget_s 60 -> 120" in verdict.reason


def test_lowering_limits_in_sealab_toml_is_still_protected(default):
    """A sealab.toml change that only lowers limits is not a raise but is still parked as a protected path."""
    new = DEFAULT_TOML.replace("train_seconds = 60", "train_seconds = 30").replace("pids = 256", "pids = 128")
    verdict = check(default, {"sealab.toml": (DEFAULT_TOML, new)})
    assert (verdict.action, verdict.rule) == ("park", "gates.protected_paths")


def test_a_zero_limit_in_sealab_toml_is_not_read_as_a_lowered_one(default):
    """cpus = 0 is no limit to Docker: the proposal's limits are read by the run's own validator, which
    refuses it, so it is not taken for a lowered limit (the proposal parks, as any protected change)."""
    from policies.rules import _spec_from_config

    new = DEFAULT_TOML.replace("cpus = 2 ", "cpus = 0 ")
    assert new != DEFAULT_TOML and _spec_from_config(new, SPEC) is None
    lowered = _spec_from_config(DEFAULT_TOML.replace("cpus = 2 ", "cpus = 1 "), SPEC)
    assert lowered is not None and lowered.resources.cpus == 1.0 and lowered.metric == SPEC.metric
    verdict = check(default, {"sealab.toml": (DEFAULT_TOML, new)})
    assert (verdict.action, verdict.rule) == ("park", "gates.protected_paths")


def test_raised_proposed_spec_is_parked(default):
    """A proposed spec with more memory than the current one is parked even without a sealab.toml diff."""
    proposed = RunSpec(resources=Resources(memory_mb=8192))
    verdict = check(default, {"train.py": (TRAIN, TRAIN + "# x\n")}, proposed_spec=proposed)
    assert verdict.rule == "gates.raise_limits" and "memory_mb 4096 -> 8192" in verdict.reason


def test_spec_beyond_absolute_limits_is_rejected(default, strict):
    """A proposed spec beyond the policy's absolute limits is rejected (not parked), naming the limit."""
    proposed = RunSpec(budget_s=7200)
    verdict = check(default, {"train.py": (TRAIN, TRAIN + "# x\n")}, proposed_spec=proposed)
    assert verdict.action == "reject" and verdict.rule == "run.max_budget_s"
    assert "budget_s 7200 exceeds 3600" in verdict.reason
    new = DEFAULT_TOML.replace("gpus = 0", "gpus = 2")
    assert check(strict, {"sealab.toml": (DEFAULT_TOML, new)}).rule == "run.max_gpus"
    assert check(default, {"sealab.toml": (DEFAULT_TOML, new)}).rule == "gates.raise_limits"


def test_check_run_spec(default, strict):
    """check_run_spec allows the scaffold's spec and rejects each limit that is exceeded."""
    assert check_run_spec(default, SPEC).allowed and check_run_spec(strict, SPEC).allowed
    assert check_run_spec(strict, RunSpec(grace_s=301)).rule == "run.max_grace_s"
    assert check_run_spec(strict, RunSpec(resources=Resources(memory_mb=16385))).rule == "run.max_memory_mb"
    assert check_run_spec(strict, RunSpec(resources=Resources(pids=513))).rule == "run.max_pids"
    assert check_run_spec(strict, RunSpec(resources=Resources(cpus=8.5))).rule == "run.max_cpus"
    assert check_run_spec(strict, RunSpec(budget_s=900)).allowed


# ---------------------------------------------------------------- acceptance


def test_noise_floor(default, strict):
    """The noise floor is max(min_delta, z * sample stdev), and min_delta with fewer than two values."""
    values = [1.000, 1.002, 1.004]  # sample stdev 0.002
    assert noise_floor(default, values) == pytest.approx(0.004)
    assert noise_floor(strict, values) == pytest.approx(0.006)
    assert noise_floor(default, [1.0, 1.0001, 1.0002]) == pytest.approx(0.001)  # 2 * 0.0001 < min_delta
    assert noise_floor(default, [1.5]) == 0.001 and noise_floor(default, []) == 0.001
    with pytest.raises(ValueError):
        noise_floor(default, [1.0, float("nan")])


def test_decide_minimize(default):
    """Minimizing, a candidate is kept only when it is lower than the best by more than the threshold."""
    assert decide(default, direction="minimize", best=1.0, candidate=0.5, threshold=0.25)[0] == "keep"
    assert decide(default, direction="minimize", best=1.0, candidate=0.75, threshold=0.25)[0] == "discard"
    assert decide(default, direction="minimize", best=1.0, candidate=1.0, threshold=0.0)[0] == "discard"
    assert decide(default, direction="minimize", best=1.0, candidate=1.5, threshold=0.25)[0] == "discard"
    decision, reason = decide(default, direction="minimize", best=1.0, candidate=0.5, threshold=0.25,
                              metric="val_bpb")
    assert "val_bpb" in reason and "0.500000" in reason and "\n" not in reason


def test_decide_maximize(default):
    """Maximizing, a candidate is kept only when it is higher than the best by more than the threshold."""
    assert decide(default, direction="maximize", best=0.5, candidate=1.0, threshold=0.25)[0] == "keep"
    assert decide(default, direction="maximize", best=0.5, candidate=0.75, threshold=0.25)[0] == "discard"
    assert decide(default, direction="maximize", best=0.5, candidate=0.5, threshold=0.0)[0] == "discard"
    assert decide(default, direction="maximize", best=0.5, candidate=0.25, threshold=0.0)[0] == "discard"


def test_decide_defaults_and_edge_cases(default):
    """Without a threshold min_delta applies; no best keeps; a non-finite candidate or bad direction is refused."""
    assert decide(default, direction="minimize", best=1.0, candidate=0.9995)[0] == "discard"
    assert decide(default, direction="minimize", best=1.0, candidate=0.998)[0] == "keep"
    assert decide(default, direction="minimize", best=None, candidate=1.2)[0] == "keep"
    assert decide(default, direction="minimize", best=1.0, candidate=float("nan"))[0] == "discard"
    with pytest.raises(ValueError):
        decide(default, direction="lower", best=1.0, candidate=0.5)


# ---------------------------------------------------------------- stopping


def stop(policy, **overrides):
    counts = dict(experiments=0, hours=0.0, cost_usd=0.0, consecutive_crashes=0, since_improvement=0)
    counts.update(overrides)
    return should_stop(policy, **counts)


def test_should_stop_runs_on_below_every_limit(default, strict):
    """Below every limit the loop goes on."""
    assert stop(default, experiments=1000, hours=100.0, cost_usd=1000.0, consecutive_crashes=4,
                since_improvement=29) is None
    assert stop(strict, experiments=99, hours=11.9, cost_usd=24.9, consecutive_crashes=2,
                since_improvement=19) is None


@pytest.mark.parametrize("overrides, rule", [
    (dict(consecutive_crashes=5), "stop.max_consecutive_crashes"),
    (dict(since_improvement=30), "stop.plateau"),
    (dict(experiments=10, max_experiments=10), "stop.max_experiments"),
    (dict(hours=2.0, max_hours=2.0), "stop.max_hours"),
    (dict(cost_usd=3.0, max_cost_usd=2.5), "stop.max_cost_usd"),
])
def test_should_stop_each_condition(default, overrides, rule):
    """Each stop condition, once reached, stops the loop with a reason naming its rule."""
    reason = stop(default, **overrides)
    assert reason is not None and reason.startswith(rule + ":") and default.stop.reason in reason
    assert "\n" not in reason


def test_should_stop_smaller_limit_wins(strict):
    """A command-line limit and the policy's combine: whichever is smaller stops the loop."""
    assert stop(strict, experiments=50, max_experiments=50).startswith("stop.max_experiments")
    assert stop(strict, experiments=100, max_experiments=500).startswith("stop.max_experiments")
    assert stop(strict, experiments=99, max_experiments=500) is None
    assert stop(strict, hours=12.0).startswith("stop.max_hours")
    assert stop(strict, cost_usd=25.0).startswith("stop.max_cost_usd")
    assert stop(strict, consecutive_crashes=3).startswith("stop.max_consecutive_crashes")


def test_drift_action_is_restore_or_halt():
    """The shipped policies restore (default) or halt (strict) on drift; anything else fails to load."""
    assert load_policy("default").drift.action == "restore" and load_policy("strict").drift.action == "halt"
    text = (POLICY_DIR / "default.toml").read_text().replace('action = "restore"', 'action = "ignore"')
    with pytest.raises(PolicyError, match="restore"):
        parse_policy(text, source="p.toml")
