"""A repository's lock as the base's packages (executor/image/deps.py): reading it, and its one-line errors."""

from pathlib import Path

import pytest

from executor.errors import BaseImageError
from executor.image import deps

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lockrepo"
SHA = "sha256:" + "a" * 64


def _files(*names: str) -> dict[str, bytes]:
    return {name: (FIXTURE / name).read_bytes() for name in names}


def test_uv_lock_is_exported_with_hashes_and_without_torch(tmp_path):
    """uv reads the fixture's uv.lock: exact versions with sha256, torch and its CUDA libraries pruned, torch's
    version kept to check the base's wheel against."""
    locked = deps.lock_of(_files("pyproject.toml", "uv.lock"), tmp_path)
    assert locked is not None and locked.source == "uv.lock" and locked.torch == "2.13.0"
    names = [p.split("==")[0] for p in locked.packages]
    assert {"pyarrow", "requests", "tqdm", "urllib3", "idna"} <= set(names)
    assert not [n for n in names if n == "torch" or n.startswith(("nvidia", "triton", "cuda"))]
    assert all("==" in p for p in locked.packages)
    assert locked.requirements.count("--hash=sha256:") >= len(locked.packages)
    assert locked.digest == deps.lock_digest(_files("pyproject.toml", "uv.lock"))


def test_a_lock_out_of_date_with_pyproject_is_refused(tmp_path):
    files = _files("pyproject.toml", "uv.lock")
    files["pyproject.toml"] = files["pyproject.toml"].replace(b'"tqdm>=4.66",', b'"tqdm>=4.66", "rich>=13",')
    with pytest.raises(BaseImageError) as info:
        deps.lock_of(files, tmp_path)
    assert str(info.value) == "the commit's uv.lock does not match its pyproject.toml: run `uv lock` and commit uv.lock"
    with pytest.raises(BaseImageError, match="uv.lock but no pyproject.toml"):
        deps.lock_of(_files("uv.lock"), tmp_path)


def test_lock_digest_covers_the_lock_files_only():
    a = {"uv.lock": b"x", "pyproject.toml": b"p", "train.py": b"1"}
    assert deps.lock_digest(a) == deps.lock_digest({**a, "train.py": b"2"})
    assert deps.lock_digest(a) != deps.lock_digest({**a, "uv.lock": b"y"})
    assert deps.lock_digest(a) != deps.lock_digest({**a, "pyproject.toml": b"q"})
    assert deps.lock_digest({"train.py": b"1"}) is None
    assert deps.lock_digest({"requirements.txt": b"a==1"}).startswith("sha256:")


def test_requirements_txt_needs_pins_and_hashes(tmp_path):
    text = (f"# compiled\nrequests==2.32.3 \\\n    --hash={SHA}\nidna==3.10 --hash={SHA} ; python_version >= '3'\n"
            f"torch==2.9.1 --hash={SHA}\nnvidia-cublas-cu12==12.8.4 --hash={SHA}\n--index-url https://x/simple\n")
    locked = deps.lock_of({"requirements.txt": text.encode()}, tmp_path)
    assert locked.source == "requirements.txt" and locked.torch == "2.9.1"
    assert locked.packages == ["requests==2.32.3", "idna==3.10"]
    for bad, said in (("requests==2.32.3\n", "requests==2.32.3 has no --hash"),
                      (f"requests>=2 --hash={SHA}\n", "'requests>=2' is not pinned with =="),
                      ("-e .\n", "`-e .` is not a pinned requirement")):
        with pytest.raises(BaseImageError) as info:
            deps.lock_of({"requirements.txt": bad.encode()}, tmp_path)
        assert said in str(info.value) and "\n" not in str(info.value)


def test_a_torch_other_than_the_lock_s_names_the_wheel_to_provide():
    locked = deps.Locked("uv.lock", SHA, "", "2.9.1")
    deps.check_torch(deps.Locked("uv.lock", SHA, "", "2.13.0"), "2.13.0+cpu", Path("/opt/wheels"))  # local tag aside
    with pytest.raises(BaseImageError) as info:
        deps.check_torch(locked, "2.13.0+cpu", Path("/opt/wheels"))
    said = str(info.value)
    assert said.startswith("uv.lock pins torch 2.9.1 but the base's torch wheel is 2.13.0+cpu: put a torch-2.9.1 wheel")
    assert "torch==2.9.1" in said and "/opt/wheels" in said and "\n" not in said


def test_pip_failures_become_one_line_naming_the_package():
    missing = ("ERROR: Could not find a version that satisfies the requirement sgmllib3k==1.0.0 (from versions: none)\n"
               "ERROR: No matching distribution found for sgmllib3k==1.0.0\n")
    assert deps.pip_failure(missing, "uv.lock").startswith(
        "uv.lock: no wheel of sgmllib3k==1.0.0 for Python 3.11 on manylinux x86_64")
    mismatch = ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. ...\n"
                "    idna==3.20 from https://files.pythonhosted.org/packages/idna-3.20-py3-none-any.whl:\n"
                "        Expected sha256 0000000000000000000000000000000000000000000000000000000000000000\n"
                "             Got        d2c8a5c0d8e1c4f1b2a3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071829\n")
    said = deps.pip_failure(mismatch, "requirements.txt")
    assert said.startswith("requirements.txt: the wheel of idna==3.20 has sha256 d2c8a5c0d8e1c4f1…, the lock says 0000")
    assert deps.pip_failure("ERROR: network down\n", "uv.lock") == \
        "pip could not download the wheels of uv.lock: network down"


def test_a_wheel_s_record_names_no_host_path_once_installed():
    """pip's RECORD lists direct_url.json (the wheel's path on the host): its line goes with the file, so a
    layer does not depend on the directory the wheels were read from (the cache dir differs per user)."""
    from executor.image.assemble import _without_scripts

    record = (b"idna/__init__.py,sha256=abc,849\nidna-3.20.dist-info/direct_url.json,sha256=xyz,277\n"
              b"../../../bin/idna,sha256=q,10\nidna-3.20.dist-info/RECORD,,\n")
    assert _without_scripts(record) == b"idna/__init__.py,sha256=abc,849\nidna-3.20.dist-info/RECORD,,\n"


def test_markers_are_decided_for_the_image_not_for_the_host():
    """A lock's entries for another Python or platform are left out, whatever Python runs sealab; the rest lose
    their markers (pip then decides nothing by the host). A marker that cannot be read is one line."""
    text = ("networkx==3.6.1 ; python_full_version < '3.12' \\\n    --hash=sha256:" + "1" * 64 + "\n"
            "networkx==3.7 ; python_full_version >= '3.12' \\\n    --hash=sha256:" + "2" * 64 + "\n"
            "pywin32==311 ; sys_platform == 'win32' \\\n    --hash=sha256:" + "3" * 64 + "\n"
            "triton==3.7.1 ; platform_machine == 'x86_64' and sys_platform == 'linux' \\\n    --hash=sha256:" + "4" * 64
            + "\n")
    assert deps.for_image(text) == ("networkx==3.6.1 \\\n    --hash=sha256:" + "1" * 64 + "\n"
                                    "triton==3.7.1 \\\n    --hash=sha256:" + "4" * 64 + "\n")
    hashed = "--hash=sha256:" + "a" * 64
    locked = deps._requirements(f"idna==3.20 ; python_version >= '3.12' {hashed}\nidna==3.10 ; python_version < '3.12' "
                                f"{hashed}\n", SHA)
    assert locked.packages == ["idna==3.10"]
    with pytest.raises(BaseImageError, match="cannot be read"):
        deps.for_image("idna==3.10 ; python_version >>> '3' \\\n    " + hashed + "\n")


def test_the_index_a_lock_takes_torch_from_is_looked_at_and_named_when_unreachable():
    """uv.lock's `source = { registry = … }` of the packages asked for (autoresearch's torch comes from the PyTorch
    cu128 index); a requirements.txt's index lines; and a pip failure to reach such an index, said in one line."""
    lock = b'''version = 1
[[package]]
name = "torch"
version = "2.9.1+cu128"
source = { registry = "https://download.pytorch.org/whl/cu128" }
[[package]]
name = "Nvidia_NCCL-cu12"
version = "2.27.5"
source = { registry = "https://pypi.example/simple" }
[[package]]
name = "tqdm"
version = "4.70.1"
source = { registry = "https://mirror.example/simple" }
[[package]]
name = "local-thing"
version = "0.1"
source = { editable = "." }
'''
    files = {"uv.lock": lock, "pyproject.toml": b"[project]\n"}
    assert deps.lock_indexes(files, {"torch", "nvidia-nccl-cu12", "local-thing"}) == (
        "https://download.pytorch.org/whl/cu128", "https://pypi.example/simple")
    assert deps.lock_indexes({"requirements.txt": b""}, {"torch"}) == ()
    assert deps.requirement_indexes("--index-url https://a.example/simple\n--extra-index-url=https://b.example/x\n"
                                    "idna==3.10\n") == ("https://a.example/simple", "https://b.example/x")
    log = ("WARNING: Retrying (Retry(total=1...)) after connection broken by 'NewConnectionError(\"Failed to establish "
           "a new connection: [Errno -2] Name or service not known\")': /whl/cu128/torch/\n"
           "ERROR: Could not find a version that satisfies the requirement torch==2.9.1+cu128\n"
           "ERROR: No matching distribution found for torch==2.9.1+cu128\n"
           "Could not fetch URL https://download.pytorch.org/whl/cu128/torch/: connection error\n")
    said = deps.pip_failure(log, "uv.lock (its torch)", ("https://download.pytorch.org/whl/cu128",))
    assert said.startswith("uv.lock (its torch): pip could not reach https://download.pytorch.org/whl/cu128")
    assert "uv lock" in said and "\n" not in said
    assert "no wheel of torch==2.9.1+cu128" in deps.pip_failure(log, "uv.lock", ())  # no index of its own: as before
