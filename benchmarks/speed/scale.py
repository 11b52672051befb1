"""Kinetics-scale costs: what a 240k-video manifest, a 1,000-point grid and a store of 100k trials
cost, each measured at two sizes (N and 4N) in fresh processes, so that growth shows.

- ``spec``: validating a study spec, ms per grid point (``parse_study``, every point's experiment).
- ``check``: ``rho data check``'s peak memory over N and 4N rows (hard links of one real mp4).
- ``manifest``: training's manifest check (``read_manifest`` under the data-root rule), seconds
  at N and 4N rows in 400 class folders, scaled to Kinetics' 240k rows.
- ``worker``: a DataLoader worker's private memory (USS) from its 100th item to its last (which
  runs a full garbage collection first, as Python does now and then), with the dataset's rows
  as Python objects (before) and as ``ManifestRows`` columns (now).
- ``study``: a store of N and 4N trials (sqlite; the rows Optuna writes for a finished trial,
  copied): `rho study status`, a new worker taking its first trial, and ``prepare_study``'s
  reads (fingerprint and queue), seconds and peak memory, beside what reading every trial as
  FrozenTrials costs (what each of the three did before).

Sizes: quick 24/96 points, 50/200 rows, 6k/24k manifest rows, 1k/4k trials; full 252/1008
points, 400/1600 rows, 60k/240k manifest rows, 25k/100k trials.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness.speed import Check, SpeedContext, SpeedResult

TITLE = (
    "Kinetics-scale costs at two sizes: spec validation, `rho data check` memory, training's manifest check, "
    "a study store's trials"
)
GOAL = (
    "spec <= 5 ms per point; data check peak at 4N within 1.2x of N; manifest check <= 3 s at 240k rows; "
    "worker private memory below the row objects' by 10%; a new study worker's start and queuing: peak memory "
    "at 4N trials within 1.5x of N"
)
ORDER = 10
PARAMS = {
    "points": "grid points of the smaller spec (4x for the larger)",
    "rows": "data check: manifest rows N (4N for the larger)",
    "manifest_rows": "training manifest check: rows N (4N for the larger)",
    "worker_rows": "rows of the dataset a DataLoader worker holds (private memory)",
    "trials": "study store: trials N (4N for the larger)",
}

SPEC_SCRIPT = """
import json, sys, time, yaml
from harness.resources import shipped
from harness.study.spec import parse_study
points = int(sys.argv[1])
raw = yaml.safe_load(shipped("studies/demo.yaml").read_text())
raw["experiment"] = str(shipped("studies/experiments/demo.yaml"))
raw.pop("baselines", None)
raw["grid"] = {"data.clips": [1, 2, 3, 4], "optim.lr": [1e-4 * (i + 1) for i in range(points // 4)]}
started = time.perf_counter()
spec = parse_study(raw, None, check_files=False)
elapsed = time.perf_counter() - started
print(json.dumps({"points": len(spec.points()), "seconds": elapsed}))
"""

CHECK_SCRIPT = """
import json, sys, time
from pathlib import Path
from harness.data.check import iter_check
from harness.data.manifest import read_manifest
started = time.perf_counter()
entries = read_manifest(sys.argv[1], check_files=False)
bad = sum(not r.ok for r in iter_check(entries, threads=2))
# VmHWM, not ru_maxrss: Linux carries the parent's peak across fork and exec into ru_maxrss
hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
print(json.dumps({"rows": len(entries), "bad": bad, "peak_mb": hwm / 1024, "seconds": time.perf_counter() - started}))
"""


PREFLIGHT_SCRIPT = """
import json, sys, time
from harness.data.manifest import read_manifest
started = time.perf_counter()
entries = read_manifest(sys.argv[1], allow_outside_root=False)
print(json.dumps({"rows": len(entries), "seconds": time.perf_counter() - started}))
"""


def _class_folders(root: Path, rows: int, classes: int = 400) -> Path:
    """``root/train.csv`` of ``rows`` empty files spread over ``classes`` class folders (cached)."""
    manifest = root / f"train{rows}.csv"
    if manifest.exists():
        return manifest
    lines = ["path,label"]
    for index in range(rows):
        label = index % classes
        video = root / f"class{label:03d}" / f"v{index:06d}.mp4"
        if index < classes:
            video.parent.mkdir(parents=True, exist_ok=True)
        video.touch()
        lines.append(f"class{label:03d}/v{index:06d}.mp4,{label}")
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


WORKER_SCRIPT = """
import gc, json, os, sys, time
from pathlib import Path
import psutil, torch
from torch.utils.data import DataLoader
from harness.data.dataset import MultiClipDataset
from harness.data.manifest import VideoEntry
video, rows, items, layout = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
links = video.parent / "links"
links.mkdir(exist_ok=True)
for i in range(items):  # the rows the worker decodes are real files; the rest are never opened
    link = links / f"v{i}.mp4"
    if not link.exists():
        link.hardlink_to(video)
entries = [
    VideoEntry(links / f"v{i}.mp4" if i < items else Path(f"/data/kinetics/train/class{i % 400:03d}/v{i:06d}.mp4"),
               i % 400, {"class_name": f"class{i % 400:03d}"})
    for i in range(rows)
]
class Collecting(MultiClipDataset):
    def __getitem__(self, key):
        if key == items - 1:
            gc.collect()  # a full collection in the worker, as Python runs one now and then
        return super().__getitem__(key)
dataset = Collecting(entries, clips=2, frames=4, stride=2)
if layout == "objects":
    dataset.entries = list(dataset.entries)  # what training held before ManifestRows
del entries
gc.collect()
loader = DataLoader(dataset, batch_size=None, sampler=range(items), num_workers=1, persistent_workers=True)
uss = {}
for done, _ in enumerate(loader, start=1):
    if done in (100, items):
        worker = psutil.Process().children()[0]
        uss[done] = worker.memory_full_info().uss / 2**20
print(json.dumps({"after_100_mb": uss[100], "after_all_mb": uss[items]}))
"""


# A study store of N trials: six trials written by Optuna (every state; a sampled, a surplus and a
# duplicate one; params, fixed params, final metrics, 20 intermediate values), their rows copied
# with new ids and keys up to N, then one grid point waiting.
STORE_SCRIPT = """
import json, sys
import optuna, sqlalchemy
from optuna.distributions import CategoricalDistribution
from optuna.storages._rdb import models
from optuna.trial import TrialState, create_trial
from harness.study.backend import make_storage, open_study
from harness.study.spec import parse_study
import yaml
from harness.resources import shipped
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, total = sys.argv[1], int(sys.argv[2])
raw = yaml.safe_load(shipped("studies/demo.yaml").read_text())
raw["experiment"] = str(shipped("studies/experiments/demo.yaml"))
raw.pop("baselines", None)
raw.update(name="scale", seeds=[0], grid={"data.clips": [1, 2, 3, 4]})
spec = parse_study(raw, None, check_files=False)
study = open_study(spec, make_storage(url, spec))
def trial(key, state, extra={}):
    params = {"data.clips": 1, "seed": 0}
    dists = {"data.clips": CategoricalDistribution([1, 2, 3, 4]), "seed": CategoricalDistribution([0])}
    attrs = {"rho.key": key, "rho.point": json.dumps({"data.clips": 1}), "rho.seed": 0, "mlflow_run_id": "f" * 32,
             "duration_s": 12.5, **{f"metric.{m}": 0.5 for m in ("loss", "lr", "clips_per_s", "data_wait", "epoch_time", "bad_files")},
             **{f"metric.eval.synth.{p}.top{k}": 0.3 for p in ("knn", "linear") for k in (1, 5)}, **extra}
    return create_trial(state=state, value=0.5 if state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
                        params=params, distributions=dists, user_attrs=attrs, system_attrs={"fixed_params": params},
                        intermediate_values={e: 1.0 / (e + 1) for e in range(20)})
study.add_trials([trial("a", TrialState.COMPLETE), trial("b", TrialState.FAIL), trial("c", TrialState.PRUNED),
                  trial("d", TrialState.COMPLETE, {"rho.sampled": True}), trial("e", TrialState.PRUNED, {"rho.surplus": True}),
                  trial("f", TrialState.PRUNED, {"rho.sampled": True, "rho.duplicate": True})])
children = [models.TrialParamModel, models.TrialValueModel, models.TrialUserAttributeModel,
            models.TrialSystemAttributeModel, models.TrialIntermediateValueModel]
engine = sqlalchemy.create_engine(url)
with engine.begin() as connection:
    table = models.TrialModel.__table__
    originals = [dict(r._mapping) for r in connection.execute(table.select())]
    rows = {m: [dict(r._mapping) for r in connection.execute(m.__table__.select())] for m in children}
    new_trials, new_children = [], {m: [] for m in children}
    for number in range(len(originals), total - 1):
        original = originals[number % len(originals)]
        new_trials.append({**original, "trial_id": number + 1, "number": number})
        for m in children:
            pk = m.__table__.primary_key.columns.keys()[0]
            for row in rows[m]:
                if row["trial_id"] == original["trial_id"]:
                    row = {k: v for k, v in row.items() if k != pk} | {"trial_id": number + 1}
                    if m is models.TrialUserAttributeModel and row["key"] == "rho.key":
                        row["value_json"] = json.dumps(f"old{number:08d}")
                    new_children[m].append(row)
    connection.execute(table.insert(), new_trials)
    for m, new in new_children.items():
        connection.execute(m.__table__.insert(), new)
study.enqueue_trial({"data.clips": 2, "seed": 0}, user_attrs={"rho.key": spec.points()[1].key,
                    "rho.point": json.dumps({"data.clips": 2}), "rho.seed": 0})
print(json.dumps({"trials": len(optuna.load_study(study_name="scale", storage=url).get_trials(deepcopy=False))}))
"""

# One of the study paths in a fresh process: seconds, and its peak memory (VmHWM) over the RSS after imports.
STUDY_SCRIPT = """
import contextlib, io, json, sys, time
from pathlib import Path
import optuna, yaml
from harness.resources import shipped
from harness.study.spec import parse_study
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, what = sys.argv[1], sys.argv[2]
raw = yaml.safe_load(shipped("studies/demo.yaml").read_text())
raw["experiment"] = str(shipped("studies/experiments/demo.yaml"))
raw.pop("baselines", None)
raw.update(name="scale", seeds=[0], grid={"data.clips": [1, 2, 3, 4]})
spec = parse_study(raw, None, check_files=False)
from harness.cli import main
from harness.study.backend import make_storage, open_study
from harness.study.lifecycle import check_fingerprint
from harness.study.queue import enqueue_points, next_trial, trial_point
from harness.study.backend import fail_dead_trials
def kb(field):
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
before = kb("VmRSS")  # after the imports: the peak over it is what the path itself holds
started = time.perf_counter()
if what == "status":
    with contextlib.redirect_stdout(io.StringIO()):
        main(["study", "status", "scale", "--storage", url])
elif what == "worker":  # a new worker up to its first trial's point
    study = open_study(spec, make_storage(url, spec))
    fail_dead_trials(study)
    trial_point(spec, next_trial(study, spec))
elif what == "prepare":  # prepare_study's reads and writes in the study store (no MLflow)
    study = open_study(spec, make_storage(url, spec))
    check_fingerprint(study, spec, url)
    enqueue_points(study, spec)
else:  # every trial as FrozenTrials: what each of the three read before
    optuna.load_study(study_name="scale", storage=url).get_trials(deepcopy=False)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_mb": (kb("VmHWM") - before) / 1024}))
"""


def _study_costs(ctx: SpeedContext, result: SpeedResult, trials: int) -> None:
    """`rho study status`, a new worker's start and prepare_study's queuing at N and 4N stored
    trials, beside the read of every trial that each of them made before."""
    measured: dict[tuple[str, int], dict] = {}
    for n in (trials, 4 * trials):
        store = ctx.workdir / "scale" / f"study{n}.db"
        store.parent.mkdir(parents=True, exist_ok=True)
        store.unlink(missing_ok=True)
        url = f"sqlite:///{store}"
        _python(STORE_SCRIPT, url, str(n))
        for what in ("every trial (before)", "status", "worker", "prepare"):
            # (the worker takes the waiting point; prepare then queues the other three, at either size)
            measured[what, n] = _python(STUDY_SCRIPT, url, what.split()[0])
            result.rows.append(
                [f"study: {what}", f"{n} trials", f"{measured[what, n]['seconds']:.2f} s", f"+{measured[what, n]['peak_mb']:.0f} MB peak",
                 f"{measured[what, n]['seconds'] / measured[what, trials]['seconds']:.2f}x" if n != trials else ""]
            )  # fmt: skip
    for what in ("worker", "prepare"):  # memory: seconds swing with the machine's load at these sizes
        growth = measured[what, 4 * trials]["peak_mb"] / max(measured[what, trials]["peak_mb"], 1.0)
        result.checks.append(Check(f"study {what}: peak memory at 4N / N", growth, "<=", 1.5))


def _python(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _one_video(path: Path) -> Path:
    """A 0.5 s 320x240 H.264 mp4 (hard-linked into every manifest row)."""
    from harness.data.encode import write_video
    from harness.speed.media import video_frames

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, video_frames(0, 15, 320, 240), fps=30)
    return path


def _manifest(folder: Path, video: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,label"]
    for index in range(rows):
        link = folder / f"v{index}.mp4"
        if not link.exists():
            link.hardlink_to(video)
        lines.append(f"v{index}.mp4,0")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def run(ctx: SpeedContext) -> SpeedResult:
    points = ctx.param("points", 24 if ctx.quick else 252)
    rows = ctx.param("rows", 50 if ctx.quick else 400)
    result = ctx.result(["cost", "size", "measured", "per item", "growth 4N / N"])

    small, large = (_python(SPEC_SCRIPT, str(n)) for n in (points, 4 * points))
    per = [1000 * r["seconds"] / r["points"] for r in (small, large)]
    # The first point pays one-off imports (the methods' and backbones' modules): the marginal
    # cost of a point is the difference between the sizes over the points added.
    marginal = 1000 * (large["seconds"] - small["seconds"]) / (large["points"] - small["points"])
    result.rows.append(
        ["spec validation", f"{small['points']} points", f"{small['seconds']:.2f} s", f"{per[0]:.2f} ms", ""]
    )
    result.rows.append(
        ["spec validation", f"{large['points']} points", f"{large['seconds']:.2f} s", f"{per[1]:.2f} ms", f"{per[1] / per[0]:.2f}x per point"]
    )  # fmt: skip
    result.rows.append(["spec validation", "marginal point", "", f"{marginal:.2f} ms", ""])
    result.checks.append(Check("spec: ms per added point", marginal, "<=", 5.0, unit=" ms"))

    video = _one_video(ctx.workdir / "scale" / "one.mp4")
    peaks = {}
    for n in (rows, 4 * rows):
        measured = _python(CHECK_SCRIPT, str(_manifest(ctx.workdir / "scale" / f"rows{n}", video, n)))
        peaks[n] = measured["peak_mb"]
        result.rows.append(
            ["data check peak RSS", f"{n} rows", f"{measured['peak_mb']:.0f} MB", f"{1000 * measured['seconds'] / n:.1f} ms",
             f"{peaks[n] / peaks[rows]:.2f}x" if n != rows else ""]
        )  # fmt: skip
    result.checks.append(Check("data check: peak RSS at 4N / N", peaks[4 * rows] / peaks[rows], "<=", 1.2))

    # Training's manifest check: N and 4N rows in 400 class folders of empty files (it reads
    # names and metadata only), under the data-root rule training applies by default.
    manifest_rows = ctx.param("manifest_rows", 6000 if ctx.quick else 60000)
    seconds = {}
    for n in (manifest_rows, 4 * manifest_rows):
        measured = _python(PREFLIGHT_SCRIPT, str(_class_folders(ctx.workdir / "scale" / "kinetics", n)))
        seconds[n] = measured["seconds"]
        result.rows.append(
            ["training manifest check", f"{n} rows", f"{measured['seconds']:.2f} s", f"{1e6 * measured['seconds'] / n:.1f} us",
             f"{seconds[n] / seconds[manifest_rows]:.2f}x" if n != manifest_rows else ""]
        )  # fmt: skip
    largest = 4 * manifest_rows
    at_240k = seconds[largest] * 240_000 / largest
    result.checks.append(
        Check("training manifest check at 240k rows (scaled)", at_240k, "<=", 3.0, unit=" s")
    )
    # DataLoader worker private memory (USS) as it loads items, the rows held as Python objects
    # (before) and as ManifestRows columns (now), side by side.
    worker_rows, items = (
        ctx.param("worker_rows", 24_000 if ctx.quick else 240_000),
        300 if ctx.quick else 2000,
    )
    final = {}
    for layout in ("objects", "columns"):
        measured = _python(WORKER_SCRIPT, str(video), str(worker_rows), str(items), layout)
        final[layout] = measured["after_all_mb"]
        result.rows.append(
            [f"worker private memory ({layout})", f"{worker_rows} rows, {items} items",
             f"{measured['after_100_mb']:.0f} -> {measured['after_all_mb']:.0f} MB",
             f"+{measured['after_all_mb'] - measured['after_100_mb']:.1f} MB", ""]
        )  # fmt: skip
    result.checks.append(
        Check("worker private memory after a full collection, columns / objects", final["columns"] / final["objects"], "<=", 0.9)
    )  # fmt: skip
    _study_costs(ctx, result, ctx.param("trials", 1000 if ctx.quick else 25_000))
    result.notes = [
        "Each size runs in a fresh process. Spec: the demo study with a data.clips x optim.lr grid, "
        "validated without file checks. Data check: rows are hard links of one 0.5 s 320x240 mp4, "
        "two decoding threads. Worker: one DataLoader worker, 2 clips of 4 frames per item; its last "
        "item runs gc.collect() first, which writes to every object the worker inherited (its pages are "
        "copied whatever the rows' layout: the interpreter's own heap, torch's modules), so the columns' "
        "gain shows as a lower level, not a flat line.",
    ]
    return result
