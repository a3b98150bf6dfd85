"""The launcher of an adopted repository's sealed run: what `[harness] command` runs under.

This file is copied, byte for byte, into every experiment image whose run spec has a `command`
(seal.py, at /sealab/launch.py), and the image's CMD is `python3 /sealab/launch.py`; so its bytes are
part of those images' IDs (a change here is a new image for the same commit). It runs inside the
container with the base's python3 and the standard library only, and it imports nothing of sealab.

Before it replaces itself with the command (os.execvp, in /workspace), it:
  - hands the budget to the repository as environment variables it may read: SEALAB_TRAIN_SECONDS,
    SEALAB_STEPS (when [budget] steps is set), SEALAB_SEED, SEALAB_METRIC;
  - fixes what decides the bits of a CPU run, as the scaffold's harness does: the OpenMP and MKL team
    sizes (the run spec's cpus, no dynamic sizing) and MKL's reproducible code path;
  - tells the Hugging Face libraries that there is no network (HF_HUB_OFFLINE=1 and the like), so they
    read what the base captured instead of trying to download it;
  - links each captured [data] directory (read-only, in the base at /opt/sealab/home/...) to the
    place under HOME where the repository computes it: HOME is an empty tmpfs in a sealed run;
  - writes /out/sealab-run.json: the CPU, the torch and the GPUs the run had, for the record.
"""

import json
import os
import platform
import sys

SPEC = "/sealab/run_spec.json"
RUN_FILE = "sealab-run.json"  # in /out: the CPU and torch this run had (executor/run.py reads it)
CAPTURED = "/opt/sealab/home"  # the base's captured [data] directories, laid out as under HOME
CAPTURED_LIST = "/opt/sealab/home.json"  # ["~/.cache/NAME", ...]: what the base captured
SITES = ("/opt/sealab/deps", "/usr/local/lib/python3.11/dist-packages")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
X86_LEVELS = (("x86-64-v2", {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}),
              ("x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
              ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}))


def environment(spec, env):
    """The environment the command runs in: `env` plus the budget, the numerics pins and offline mode."""
    cpus = max(1, int(float(spec.get("resources", {}).get("cpus", 1) or 1)))
    out = dict(env)
    out.update({"SEALAB_TRAIN_SECONDS": f"{float(spec.get('budget_s', 60)):g}",
                "SEALAB_SEED": str(spec.get("seed", 42)), "SEALAB_METRIC": str(spec.get("metric", ""))})
    if spec.get("steps") is not None:
        out["SEALAB_STEPS"] = str(spec["steps"])
    out.update({"OMP_NUM_THREADS": str(cpus), "MKL_NUM_THREADS": str(cpus), "OMP_DYNAMIC": "FALSE",
                "MKL_DYNAMIC": "FALSE", "MKL_CBWR": "AUTO,STRICT", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    for key, value in OFFLINE.items():
        out.setdefault(key, value)
    return out


def link_captured(home, captured_list=CAPTURED_LIST, captured=CAPTURED):
    """Link every captured directory into `home`; returns the links made."""
    try:
        with open(captured_list, encoding="utf-8") as f:
            dirs = json.load(f)
    except OSError:
        return []
    made = []
    for name in dirs:
        rel = name[2:]  # "~/.cache/NAME" -> ".cache/NAME"
        link = os.path.join(home, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.join(captured, rel), link)
        made.append(link)
    return made


def cpu():
    """The CPU model, its x86-64 level and the torch of this run, as far as the container can tell."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "CPU part") and model == "unknown":
                    model = " ".join(value.split())
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    isa = platform.machine()
    if isa == "x86_64":
        isa = "x86-64"
        for level, needed in X86_LEVELS:
            if not needed <= flags:
                break
            isa = level
        if "amx_tile" in flags:
            isa += "+amx"
    torch = "unknown"
    for site in SITES:  # the version from the installed metadata: importing torch here would cost seconds
        try:
            names = os.listdir(site)
        except OSError:
            continue
        found = [n for n in names if n.startswith("torch-") and n.endswith(".dist-info")]
        if found:
            torch = found[0][len("torch-"):-len(".dist-info")]
            break
    return {"model": model, "isa": isa, "torch": torch}


def gpus(proc="/proc/driver/nvidia", sites=SITES):
    """The GPUs the NVIDIA container toolkit gave this container, without importing torch: their model
    names (/proc/driver/nvidia/gpus/*/information), the driver's version, and the CUDA the base's torch
    was built for (torch/version.py, read as text); None without a driver."""
    try:
        with open(os.path.join(proc, "version"), encoding="utf-8", errors="replace") as f:
            head = f.readline()
    except OSError:
        return None
    words = head.split()
    driver = next((w for w in words if w[:1].isdigit() and w.count(".") >= 1), None)
    names = []
    try:
        boards = sorted(os.listdir(os.path.join(proc, "gpus")))
    except OSError:
        boards = []
    for board in boards:
        try:
            with open(os.path.join(proc, "gpus", board, "information"), encoding="utf-8", errors="replace") as f:
                names += [line.split(":", 1)[1].strip() for line in f if line.startswith("Model:")]
        except OSError:
            continue
    cuda = None
    for site in sites:
        try:
            with open(os.path.join(site, "torch", "version.py"), encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("cuda") and "=" in line:
                        value = line.split("=", 1)[1].strip().strip("'\"")
                        cuda = None if value == "None" else value
            break
        except OSError:
            continue
    return {"name": names[0] if names else "unknown", "count": len(names), "driver": driver, "cuda": cuda}


def main():
    with open(SPEC, encoding="utf-8") as f:
        spec = json.load(f)
    argv = spec.get("command") or []
    if not argv:
        sys.exit("sealab launcher: the run spec has no command")
    env = environment(spec, os.environ)
    link_captured(env.get("HOME", "/home/sealab"))
    facts = {"cpu": {**cpu(), "threads": int(env["OMP_NUM_THREADS"])}, "gpu": gpus(), "command": argv}
    try:
        with open(os.path.join("/out", RUN_FILE), "w", encoding="utf-8") as f:
            json.dump(facts, f)
    except OSError:
        pass
    os.chdir("/workspace")
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        sys.exit(f"sealab launcher: cannot run {argv[0]!r} ([harness] command): {exc.strerror}")


if __name__ == "__main__":
    main()
