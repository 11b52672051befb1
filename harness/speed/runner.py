"""``rho bench``: find the speed benchmarks of ``benchmarks/speed/*.py``, run them, print and record the results.

A speed benchmark is a Python file with ``TITLE`` (what it compares), ``GOAL`` (the goal it is held
to), ``ORDER`` (its place in RESULTS.md), optional ``PARAMS`` (``{name: help}`` for
``--param name=value``) and ``run(ctx: SpeedContext) -> SpeedResult``. It measures the reference
and ours in the same run and reports their ratio and whether the goal is met.

Results are kept per benchmark in ``RESULTS.json`` beside ``RESULTS.md`` (default
``benchmarks/``), so running one benchmark updates its own section and leaves the others'
last results, each with the machine, load, date and command that produced it.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from harness.errors import RhoError
from harness.resources import bench_results, shipped
from harness.speed.environment import describe_machine, load_average
from harness.speed.result import SpeedResult, markdown_table

SPEED_DIR = shipped("benchmarks/speed")
DEFAULT_OUTPUT = bench_results()
DEFAULT_WORKDIR = Path("mlruns/bench")


class SpeedError(RhoError, ValueError):
    """A bad speed benchmark name, parameter or file: reported before anything runs."""


@dataclass
class SpeedContext:
    """What a speed benchmark gets: its size, a work folder for cached inputs, and its ``--param`` values."""

    name: str
    title: str
    goal: str
    quick: bool
    workdir: Path
    params: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> str:
        return "quick" if self.quick else "full"

    def param(self, key: str, default: Any, kind: Callable[[str], Any] = int) -> Any:
        """``--param key=value`` converted by ``kind``, else ``default``."""
        if key not in self.params:
            return default
        try:
            return kind(self.params[key])
        except ValueError:
            raise SpeedError(
                f"bench {self.name}: --param {key}={self.params[key]!r} is not a valid {kind.__name__}"
            ) from None

    def result(self, columns: Sequence[str], **fields: Any) -> SpeedResult:
        """An empty result of this benchmark with the given table columns."""
        return SpeedResult(
            name=self.name, title=self.title, goal=self.goal, columns=list(columns), size=self.size, **fields
        )


@dataclass
class SpeedBench:
    """One speed benchmark: the loaded ``benchmarks/speed/<name>.py``."""

    name: str
    path: Path
    module: ModuleType

    @property
    def title(self) -> str:
        return self.module.TITLE

    @property
    def goal(self) -> str:
        return self.module.GOAL

    @property
    def order(self) -> int:
        return getattr(self.module, "ORDER", 100)

    @property
    def params(self) -> dict[str, str]:
        return dict(getattr(self.module, "PARAMS", {}))


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"rho_bench_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SpeedError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    for attribute in ("TITLE", "GOAL", "run"):
        if not hasattr(module, attribute):
            raise SpeedError(f"{path}: a benchmark file needs {attribute} (see harness/speed/runner.py)")
    return module


def discover(folder: str | Path = SPEED_DIR) -> dict[str, SpeedBench]:
    """Every benchmark file of ``folder`` (not starting with ``_``), in ``ORDER``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpeedError(f"{folder}: no such benchmark folder")
    found = [
        SpeedBench(path.stem, path, _load(path))
        for path in sorted(folder.glob("*.py"))
        if not path.name.startswith("_")
    ]
    return {bench.name: bench for bench in sorted(found, key=lambda b: (b.order, b.name))}


def select(available: dict[str, SpeedBench], names: Sequence[str]) -> list[SpeedBench]:
    """The named benchmarks (all when ``names`` is empty); an unknown name is an error listing the known ones."""
    if not names:
        return list(available.values())
    unknown = [name for name in names if name not in available]
    if unknown:
        raise SpeedError(f"unknown benchmark {unknown[0]!r}; known: {', '.join(available)}")
    return [available[name] for name in dict.fromkeys(names)]


def parse_params(pairs: Sequence[str], chosen: Sequence[SpeedBench]) -> dict[str, dict[str, str]]:
    """``name.key=value`` or ``key=value`` (for every chosen benchmark taking ``key``) → per-benchmark params."""
    params: dict[str, dict[str, str]] = {bench.name: {} for bench in chosen}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SpeedError(f"--param {pair!r}: expected key=value or benchmark.key=value")
        target, dot, short = key.partition(".")
        targets = [b for b in chosen if b.name == target] if dot else chosen
        name = short if dot else key
        takers = [bench for bench in targets if name in bench.params]
        if not takers:
            known = {bench.name: sorted(bench.params) for bench in targets}
            raise SpeedError(f"--param {pair!r}: no chosen benchmark takes {name!r}; parameters: {known}")
        for bench in takers:
            params[bench.name][name] = value
    return params


def run_one(
    bench: SpeedBench, quick: bool, workdir: Path, params: dict[str, str], command: str
) -> SpeedResult:
    """Run one benchmark; a crash becomes a result whose ``skipped`` names the error."""
    ctx = SpeedContext(
        bench.name, bench.title, bench.goal, quick, Path(workdir).resolve() / bench.name, params
    )
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    threads = torch.get_num_threads()  # benchmarks pin it; the next one starts from the default
    started = time.perf_counter()
    try:
        result = bench.module.run(ctx)
    except SpeedError:
        raise
    except Exception as exc:
        traceback.print_exc()
        result = ctx.result([], skipped=f"failed: {exc.__class__.__name__}: {exc}")
    finally:
        torch.set_num_threads(threads)
    result.seconds = time.perf_counter() - started
    result.environment = {
        **describe_machine(),
        "load_before": load_before,
        "load_after": load_average(),
        "command": command,
        "params": params,
    }
    return result


def run_benchmarks(
    names: Sequence[str] = (),
    *,
    quick: bool = False,
    workdir: str | Path = DEFAULT_WORKDIR,
    output: str | Path | None = DEFAULT_OUTPUT,
    params: Sequence[str] = (),
    folder: str | Path = SPEED_DIR,
    echo: Callable[[str], None] = print,
) -> list[SpeedResult]:
    """Run the named benchmarks (all by default), print each result, and update ``output`` (RESULTS.md).

    Names and parameters are checked before anything runs.
    """
    available = discover(folder)
    chosen = select(available, names)
    per_bench = parse_params(params, chosen)
    command = "rho bench " + " ".join(
        [*(["--quick"] if quick else []), *(f"--param {shlex.quote(p)}" for p in params), *names]
    )
    results = []
    for bench in chosen:
        echo(f"== bench {bench.name} ({'quick' if quick else 'full'}): {bench.title}")
        result = run_one(bench, quick, Path(workdir), per_bench[bench.name], command.strip())
        echo(result.markdown())
        results.append(result)
        if output is not None:
            write_results(output, results, available)
    echo(summary(results))
    return results


def summary(results: Sequence[SpeedResult]) -> str:
    """One line per benchmark: its checks' verdict and how long it took."""
    rows = []
    for result in results:
        verdict = (
            result.skipped
            if result.skipped is not None
            else {True: "met", False: "NOT met", None: "-"}[result.met]
        )
        checks = "; ".join(f"{c.name} {c.value:.3g}{c.unit} ({c.op} {c.bound:g})" for c in result.checks)
        rows.append([result.name, result.size, verdict, checks, f"{result.seconds:.0f}"])
    return markdown_table(["benchmark", "size", "goal", "measured", "seconds"], rows)


def write_results(
    output: str | Path, results: Sequence[SpeedResult], available: dict[str, SpeedBench]
) -> Path:
    """Merge ``results`` into ``<output>.json`` (one entry per benchmark) and render ``output`` from it."""
    output = Path(output)
    store = output.with_suffix(".json")
    kept: dict[str, Any] = json.loads(store.read_text()) if store.is_file() else {}
    for result in results:
        kept[result.name] = result.to_dict()
    output.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(kept, indent=1, sort_keys=True, default=str) + "\n")
    order = {name: index for index, name in enumerate(available)}
    stored = sorted(
        (SpeedResult.from_dict(data) for data in kept.values()), key=lambda r: order.get(r.name, len(order))
    )
    output.write_text(render(stored))
    return output


def render(results: Sequence[SpeedResult]) -> str:
    """RESULTS.md: how to reproduce, the summary, then one section per benchmark."""
    latest = max(
        (r.environment for r in results if r.environment), key=lambda e: e.get("date", ""), default={}
    )
    versions = ", ".join(f"{k} {v}" for k, v in latest.get("versions", {}).items())
    lines = [
        "# Speed and memory benchmarks",
        "",
        "Written by `rho bench` (see `docs/benchmarks.md`); each section below is the last run of",
        "that benchmark, with its own date, load and command. Every benchmark measures the reference",
        "and ours in the same run; ratios are what count, absolute numbers depend on the machine and",
        "on what else ran on it (the load average is recorded for that reason).",
        "",
        f"- Machine: {latest.get('machine', '?')} ({latest.get('os', '?')})",
        f"- Python {latest.get('python', '?')}; {versions}",
        f"- Commit: {latest.get('commit', '?')}; date: {latest.get('date', '?')}",
        "- Reproduce everything: `rho bench` (or `python -m harness bench`); one benchmark: `rho bench NAME`.",
        "",
        summary(results),
        "",
    ]
    for result in results:
        lines.append(result.markdown())
    return "\n".join(lines).rstrip() + "\n"
