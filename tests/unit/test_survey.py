"""executor/survey.py: what adoption finds in a checkout, and the sealab.toml it renders (pure, files in tmp_path)."""

import shutil
from pathlib import Path

import pytest

from executor import config
from executor.errors import WorkspaceError
from executor.survey import render_toml, survey

MAZE = Path(__file__).resolve().parents[1] / "fixtures" / "maze"

# A checkout shaped like karpathy/autoresearch (written here, not copied): a locked project, a
# prepare step that fills ~/.cache/autoresearch, a training script that prints a `---` summary.
AUTORESEARCH = {
    "pyproject.toml": '[project]\nname = "ar"\nversion = "0.1.0"\n'
                      'dependencies = ["torch==2.9.1", "numpy>=2.2", "tiktoken>=0.11", "pyarrow>=21.0"]\n',
    "uv.lock": "version = 1\n",
    "prepare.py": 'import os\n\nCACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")\n'
                  'DATA_DIR = os.path.join(CACHE_DIR, "data")\n\n\ndef main():\n'
                  '    os.makedirs(DATA_DIR, exist_ok=True)\n    print(f"Data: ready in {DATA_DIR}")\n',
    "train.py": 'from prepare import DATA_DIR\n\n\ndef main(val_bpb=1.0, t=300.0):\n'
                '    print(f"\\rstep {1:05d} | loss: {2.5:.6f}", end="")\n'
                '    print("---")\n'
                '    print(f"val_bpb:          {val_bpb:.6f}")\n'
                '    print(f"training_seconds: {t:.1f}")\n'
                '    print(f"peak_vram_mb:     {0.0:.1f}")\n'
                '    print(f"num_steps:        {100}")\n',
    "program.md": "# autoresearch\n\nThe goal is simple: get the lowest val_bpb.\n\n"
                  "The metric is val_bpb (validation bits per byte): lower is better. VRAM is a soft constraint.\n",
}


def _checkout(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def test_an_autoresearch_shaped_checkout(tmp_path):
    """The locked deps, the prepare step's cache directory, val_bpb after `---`, lower is better from program.md."""
    found = survey(_checkout(tmp_path, AUTORESEARCH))
    assert found.research_files == ("train.py", "prepare.py", "program.md")
    assert found.deps_files == ("pyproject.toml", "uv.lock")
    assert found.deps_why == "pyproject.toml (4 dependencies: torch, numpy, tiktoken, pyarrow) + uv.lock"
    assert [d.path for d in found.data_dirs] == ["~/.cache/autoresearch"]
    assert found.data_dirs[0].why == "computed in prepare.py" and not found.data_dirs[0].downloads
    assert (found.metric, found.direction, found.dashes) == ("val_bpb", "minimize", True)
    assert "after `---`" in found.metric_why and "program.md" in found.direction_why
    assert found.command == "python3 train.py"
    assert found.todo == ("run `python prepare.py` once on this machine (it fills ~/.cache/autoresearch), "
                          "then `sealab base`",)


def test_its_sealab_toml_parses_to_the_surveyed_values(tmp_path):
    """The rendered file is the default's settings with the surveyed metric, command, summary source and
    data dirs, and no grace_seconds: the kill deadline is measured from the baseline runs."""
    text = render_toml(survey(_checkout(tmp_path, AUTORESEARCH)))
    cfg, default = config.parse(text), config.parse(config.DEFAULT_TOML)
    assert (cfg.run_spec.metric, cfg.run_spec.direction) == ("val_bpb", "minimize")
    assert cfg.run_spec.command == ("python3", "train.py") and cfg.metric_source == "summary"
    assert cfg.data_dirs == ("~/.cache/autoresearch",)
    assert not cfg.grace_given and cfg.measured_grace
    assert "\n# grace_seconds = 60" in text and "measured from the baseline runs" in text
    assert "REPORTED BY EDITABLE CODE" in text
    assert (cfg.run_spec.budget_s, cfg.run_spec.seed, cfg.run_spec.resources) == \
        (default.run_spec.budget_s, default.run_spec.seed, default.run_spec.resources)
    assert (cfg.policy, cfg.wheels, cfg.backend) == (default.policy, default.wheels, default.backend)
    assert all(line in text for line in config.DEFAULT_TOML.splitlines() if line.startswith(("[", "#", "cpus")))


def test_the_maze_fixture(tmp_path):
    """tests/fixtures/maze: solve_rate, higher is better (program.md), no `---`, no deps, no data, no prepare.py."""
    root = tmp_path / "maze"
    shutil.copytree(MAZE, root)
    found = survey(root)
    assert found.research_files == ("train.py", "program.md")
    assert (found.metric, found.direction, found.dashes) == ("solve_rate", "maximize", False)
    assert "Higher is better" in found.direction_why
    assert found.deps_files == () and found.data_dirs == () and found.todo == ()
    assert "no prepare.py" in found.findings[0] and "no `---` line" in " ".join(found.findings)
    cfg = config.parse(render_toml(found))
    assert (cfg.run_spec.metric, cfg.run_spec.direction, cfg.data_dirs) == ("solve_rate", "maximize", ())


@pytest.mark.parametrize("code", [
    'import os\nD = os.path.join(os.path.expanduser("~"), ".cache", "NAME")\n',
    'import os\nD = os.path.expanduser("~/.cache/NAME/shards")\n',
    'from pathlib import Path\nD = Path.home() / ".cache" / "NAME"\n',
    'import os\nD = os.path.join(os.path.expanduser("~"), ".cache/NAME")\n',
    'import os\nCACHE = os.path.join(os.path.expanduser("~"), ".cache")\nD = os.path.join(CACHE, "NAME", "x.bin")\n',
    'import os\nHOME = os.environ["HOME"]\nD = f"{HOME}/.cache/NAME"\n',
    'import pathlib\nD: pathlib.Path = pathlib.Path("~/.cache/NAME").expanduser()\n',
    'from pathlib import Path\nD = Path.home().joinpath(".cache", "NAME")\n',
])
def test_each_spelling_of_a_cache_directory(tmp_path, code):
    """A path under ~/.cache computed by any usual spelling, in a module one directory down, is ~/.cache/NAME."""
    found = survey(_checkout(tmp_path, {"train.py": "print('hi')\n", "lib/data.py": code}))
    assert [(d.path, d.why) for d in found.data_dirs] == [("~/.cache/NAME", "computed in lib/data.py")]


def test_paths_that_are_no_cache_directory_and_skipped_directories(tmp_path):
    """~/.config, a /tmp/.cache, a computed name, .venv/ and two levels down are not data dirs; a file
    that does not parse is skipped."""
    files = {"train.py": 'import os\nA = os.path.expanduser("~/.config/x")\nB = "/tmp/.cache/y"\n'
                         'C = os.path.join(os.path.expanduser("~"), ".cache", name)\n',
             ".venv/site.py": 'D = "~/.cache/venv"\n', "a/b/deep.py": 'E = "~/.cache/deep"\n',
             "broken.py": 'F = "~/.cache/broken"\nif\n'}
    assert survey(_checkout(tmp_path, files)).data_dirs == ()


@pytest.mark.parametrize("code, how", [
    ("from kernels import get_kernel\n", "imports kernels"),
    ("import huggingface_hub\n", "imports huggingface_hub"),
    ("def load(cls):\n    return cls.from_pretrained('gpt2')\n", "calls from_pretrained"),
])
def test_hugging_face_downloads_are_suggested_for_capture(tmp_path, code, how):
    """Hugging Face use gives ~/.cache/huggingface and a to-do: run it once here, as a sealed run is offline."""
    found = survey(_checkout(tmp_path, {"train.py": code + "print(f'loss: {1.0}')\n"}))
    assert [(d.path, d.why, d.downloads) for d in found.data_dirs] == \
        [("~/.cache/huggingface", f"train.py {how}", True)]
    assert any("~/.cache/huggingface" in t and "offline" in t and "sealab base" in t for t in found.todo)
    assert config.parse(render_toml(found)).data_dirs == ("~/.cache/huggingface",)


def test_dependency_files(tmp_path):
    """pyproject.toml without uv.lock asks for `uv lock`; requirements.txt is named; none says so."""
    bare = survey(_checkout(tmp_path / "a", {"train.py": "", "pyproject.toml": '[project]\nname = "x"\n'}))
    assert bare.deps_files == ("pyproject.toml",) and "without uv.lock" in bare.deps_why
    assert any(t.startswith("run `uv lock` and commit uv.lock") for t in bare.todo)
    reqs = survey(_checkout(tmp_path / "b", {"train.py": "", "requirements.txt": "numpy==2.2.0\n"}))
    assert reqs.deps_files == ("requirements.txt",) and reqs.deps_why == "requirements.txt"
    assert not any("uv lock" in t for t in reqs.todo)
    none = survey(_checkout(tmp_path / "c", {"train.py": ""}))
    assert none.deps_files == () and none.deps_why.startswith("none")


@pytest.mark.parametrize("line", ['print("solve_rate:", x)', 'print(f"solve_rate: {x}")',
                                  'print("solve_rate: %.3f" % x)', 'print("solve_rate: {}".format(x))'])
def test_each_print_of_a_key(tmp_path, line):
    """`name: value` prints in each usual form are candidates; "step 3: ..." and learning_rate are not."""
    code = f'x = 1\nprint(f"step {{x}}: training")\nprint(f"learning_rate: {{x}}")\n{line}\n'
    found = survey(_checkout(tmp_path, {"train.py": code}))
    assert [p.name for p in found.printed] == ["learning_rate", "solve_rate"]
    assert (found.metric, found.direction) == ("solve_rate", "maximize")
    assert found.direction_why == "higher is better for a metric named solve_rate"


def test_program_md_decides_over_known_names(tmp_path):
    """The metric program.md gives a direction for wins over a known name, and its direction over the usual one."""
    train = 'print("---")\nprint(f"loss: {1.0}")\nprint(f"widgets: {3}")\nprint(f"error: {0.1}")\n'
    program = "# task\n\nWe track the loss too, but the metric is widgets: maximize it.\n\n" \
              "Here error is higher is better, oddly.\n"
    found = survey(_checkout(tmp_path / "a", {"train.py": train, "program.md": program}))
    assert (found.metric, found.direction) == ("widgets", "maximize")
    assert found.metric_why.endswith("program.md calls it the metric")
    odd = survey(_checkout(tmp_path / "b", {"train.py": 'print(f"error: {0.1}")\n', "program.md": program}))
    assert (odd.metric, odd.direction) == ("error", "maximize") and "usually lower-is-better" in odd.direction_why


def test_known_names_without_program_md_and_what_is_left_to_do(tmp_path):
    """No program.md: the known name after `---` is chosen, and the to-do says to write program.md."""
    train = 'print(f"accuracy: {0.1}")\nprint("---")\nprint(f"epochs: {3}")\nprint(f"val_loss: {0.5}")\n'
    found = survey(_checkout(tmp_path, {"train.py": train, "prepare.py": "print('prep')\n"}))
    assert (found.metric, found.direction) == ("val_loss", "minimize")
    assert found.research_files == ("train.py", "prepare.py")
    assert any(t.startswith("write program.md") for t in found.todo)
    assert any(t.startswith("prepare.py fills no directory found in the code") for t in found.todo)


def test_an_unknown_or_missing_metric_is_left_to_the_user(tmp_path):
    """An unknown name is kept with a direction to check; none printed keeps val_bpb with a to-do to set it."""
    unknown = survey(_checkout(tmp_path / "a", {"train.py": 'print(f"widgets: {3}")\n', "program.md": "# x\n"}))
    assert (unknown.metric, unknown.direction) == ("widgets", "minimize")
    assert any(t.startswith("check [metric] direction") for t in unknown.todo)
    silent = survey(_checkout(tmp_path / "b", {"train.py": "x = 1\n", "program.md": "# x\n"}))
    assert silent.metric is None and any(t.startswith("set [metric] name") for t in silent.todo)
    assert config.parse(render_toml(silent)).run_spec.metric == "val_bpb"


def test_not_a_directory_is_one_line(tmp_path):
    with pytest.raises(WorkspaceError, match="is not a directory") as info:
        survey(tmp_path / "missing")
    assert "\n" not in str(info.value)
