"""Start-up: wall time of the light ``rho`` commands, each in a fresh Python process.

``python -m harness --help``, ``config keys``, ``config show`` (the demo config with an
override: every key checked, the method's and backbone's parameters read from source) and
``data import folders`` (a small class tree of empty stand-in files: the importer never
decodes) are each run ``rounds`` times; the
median is held to the goal and also shown against a bare ``python -c pass``, the interpreter's
own start, which no command can go below. ``heavy imports`` names the heavy packages
(torch, mlflow, optuna, ...) the command imported, read from ``-X importtime``: none is the goal
that keeps the time down.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness.speed import Check, SpeedContext, SpeedResult

TITLE = (
    "wall time of `rho --help`, `rho config keys`, `rho config show` and `rho data import folders` "
    "(fresh process)"
)
GOAL = "each under 1 s, importing none of torch, mlflow, optuna, pandas, matplotlib, av"
ORDER = 9
PARAMS = {"rounds": "runs per command (default 7; quick 2)"}

GOAL_SECONDS = 1.0
HEAVY = ("torch", "torchvision", "pytorchvideo", "mlflow", "optuna", "pandas", "matplotlib", "av")
REPO = Path(__file__).resolve().parents[2]


def _class_tree(folder: Path) -> Path:
    """``folder/<class>/<video>``: 4 classes of 25 empty files (an importer reads names, not pixels)."""
    for label in range(4):
        for index in range(25):
            video = folder / f"class{label}" / f"clip{index:02d}.mp4"
            video.parent.mkdir(parents=True, exist_ok=True)
            video.touch()
    return folder


def _run(args: list[str], importtime: bool = False) -> tuple[float, str]:
    """(wall seconds, stderr) of ``python [-X importtime] ARGS`` run from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), *args]
    started = time.perf_counter()
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, out.stderr


def _heavy_imports(args: list[str]) -> list[str]:
    """The heavy top-level packages ``python ARGS`` imports."""
    _, stderr = _run(args, importtime=True)
    lines = [line for line in stderr.splitlines() if line.startswith("import time:")]
    return sorted({line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines} & set(HEAVY))


def run(ctx: SpeedContext) -> SpeedResult:
    rounds = ctx.param("rounds", 2 if ctx.quick else 7)
    tree = _class_tree(ctx.workdir / "classes")
    commands = {
        "rho --help": ["-m", "harness", "--help"],
        "rho config keys": ["-m", "harness", "config", "keys"],
        "rho config show": [
            "-m",
            "harness",
            "config",
            "show",
            "studies/experiments/demo.yaml",
            "data.clips=3",
            "--no-check-files",
        ],
        "rho data import folders": ["-m", "harness", "data", "import", "folders", str(tree), str(tree)],
    }
    bare = statistics.median(_run(["-c", "pass"])[0] for _ in range(rounds))
    result = ctx.result(
        ["command", "median s", "min s", "ours / goal", "ours / bare python", "heavy imports"]
    )
    for label, args in commands.items():
        _run(args)  # warm the file cache, untimed
        times = [_run(args)[0] for _ in range(rounds)]
        median = statistics.median(times)
        heavy = _heavy_imports(args)
        result.rows.append(
            [label, median, min(times), median / GOAL_SECONDS, median / bare, ", ".join(heavy) or "none"]
        )
        result.checks.append(Check(f"{label}: median wall time", median, "<=", GOAL_SECONDS, unit=" s"))
    result.notes = [
        f"{rounds} runs per command after one untimed run; bare `python -c pass` {bare:.3f} s (median). "
        f"The import tree is a class-per-folder tree of {4 * 25} empty files in 4 classes."
    ]
    return result
