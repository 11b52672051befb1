"""The machine a benchmark ran on: CPU, cores, memory, load, accelerator, package versions, commit."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "av", "pytorchvideo", "numpy", "optuna", "mlflow")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> str:
    """The 1-minute load average, or '?' where the OS has none."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def cuda_device() -> str | None:
    """The name of CUDA device 0, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def _git(root: Path, *args: str) -> str:
    """The stripped output of ``git -C root *args``.

    Raises:
        OSError, subprocess.SubprocessError: git is missing, fails, or takes over 5 s.
    """
    command = ["git", "-C", str(root), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=5, check=True).stdout.strip()


def git_commit() -> str:
    """HEAD of the repository this package lives in, with ``-dirty`` for uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = _git(root, "rev-parse", "--short=12", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def describe_machine() -> dict[str, Any]:
    """What RESULTS.md records about where the numbers come from."""
    import psutil

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    cores = usable_cores()
    memory_gib = psutil.virtual_memory().total / 2**30
    gpu = cuda_device()
    machine = f"{cpu_model()}, {cores} cores, {memory_gib:.0f} GiB" + (f", {gpu}" if gpu else ", no GPU")
    return {
        "machine": machine,
        "cpu": cpu_model(),
        "cores": cores,
        "memory_gib": round(memory_gib, 1),
        "gpu": gpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
