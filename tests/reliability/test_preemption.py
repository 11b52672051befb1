"""Preemption: a stop signal (SIGUSR1, SIGTERM: what SLURM sends before a time limit) stops every
rank at the same step with a mid-epoch checkpoint there and exit status 75; `--resume` goes on from
that step, bit-identical to a run that was never stopped. Real `rho` processes, real signals, real
gloo ranks, real Optuna storages and MLflow stores."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
import torch
import yaml
from mlflow import MlflowClient
from reliability_helpers import REPO, free_port, same, tiny_experiment_tree
from torch.utils.data import DataLoader

from harness.checkpoint import load_checkpoint
from harness.config import ConfigError, build_experiment
from harness.data.epoch_order import EpochBatchSampler, EpochSampler
from harness.runtime import EXIT_PREEMPTED, Preempted
from harness.study.backend import fail_dead_trials, make_storage, open_study, record_heartbeat
from harness.study.spec import load_study, parse_study
from harness.train import pretrain

SEED = int(os.environ.get("RHO_TEST_PREEMPT_SEED", "25"))
TIMING_KEYS = {"clips_per_s", "data_wait", "epoch_time"}  # measured, not computed: they differ run to run
PREEMPTED = re.compile(r"rho: preempted: stopped by (SIG\w+) at step (\d+) \(epoch (\d+), after (\d+) of")


def heavy_tree(tiny_synth, tmp_path: Path, epochs: int = 4, batch_size: int = 2) -> dict:
    """The tiny experiment with steps of a few tenths of a second, so that signals land within epochs."""
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["backbone"]["width"] = 48
    tree["data"].update(frames=8, stride=1, crop=32, batch_size=batch_size)
    tree["optim"].update(epochs=epochs, base_batch_size=batch_size)
    return tree


def write_config(tmp_path: Path, tree: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


def computed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def assert_same_training(straight: Path, resumed: Path, uri: str, repeated_steps: bool = False) -> None:
    """Every tensor of the final checkpoints, every epoch's metrics and every step's loss are equal."""
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    for key in ("method", "optimizer", "epoch", "step", "rng", "config_hash"):
        assert same(a[key], b[key]), f"{key} differs from the uninterrupted run"
    assert "in_epoch" not in b and b["format"] == 1, "the final checkpoint is an epoch end's"
    assert computed(a["history"]) == computed(b["history"])
    client = MlflowClient(uri)
    steps_a = [(m.step, m.value) for m in client.get_metric_history(a["run_id"], "loss")]
    history_b = sorted(client.get_metric_history(b["run_id"], "loss"), key=lambda m: (m.timestamp, m.step))
    steps_b = [(m.step, m.value) for m in history_b]
    if not repeated_steps:  # a stop writes every step's metrics up to its checkpoint, and no more
        assert sorted(s for s, _ in steps_b) == sorted({s for s, _ in steps_b}), "a step was logged twice"
    assert sorted(steps_a) == sorted(dict(steps_b).items()), "the step losses differ"
    assert len(steps_a) == a["step"]
    assert client.get_run(b["run_id"]).info.status == "FINISHED"


class Process:
    """A `rho` process whose stdout and stderr are read as they come (``marker`` in stdout sets ``seen``)."""

    def __init__(self, command: list[str], marker: str = "resuming", env: dict | None = None):
        self.popen = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.seen = threading.Event()
        self.threads = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.out, marker), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err, None), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _read(self, stream, lines: list[str], marker: str | None) -> None:
        for line in stream:
            lines.append(line)
            if marker and marker in line:
                self.seen.set()

    def wait(self, timeout: float = 600) -> int:
        code = self.popen.wait(timeout)
        for thread in self.threads:
            thread.join(30)
        return code

    @property
    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)


def started_training(process: Process, output: Path, uri: str, timeout: float = 300) -> bool:
    """Wait until the run is about to train: its run.json is written (a new run), or the MLflow run
    of its checkpoint is RUNNING again (a resumed one; it was KILLED when it stopped)."""
    last = load_checkpoint(output / "last.pt") if (output / "last.pt").is_file() else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.popen.poll() is None:
        if last is None and (output / "run.json").is_file():
            return True
        if last is not None and MlflowClient(uri).get_run(last["run_id"]).info.status == "RUNNING":
            return True
        time.sleep(0.05)
    return False


def preempt_until_done(
    command: list[str],
    output: Path,
    uri: str,
    training_s: float,
    total_steps: int,
    rng: random.Random,
    pick_target=lambda process: process.popen,
    min_mid_epoch: int = 1,
    ranks: int = 1,
) -> list[dict]:
    """Start ``command`` (a `--resume` run) again and again, each time with SIGUSR1 or SIGTERM (in
    turn) at a random moment of its training, until at least ``min_mid_epoch`` stops landed within
    an epoch; then let it finish. Returns what each stop reported and left on disk."""
    stops: list[dict] = []
    for attempt in range(10):
        process = Process(command)
        mid_epoch = sum(1 for s in stops if s["in_epoch"])
        if mid_epoch < min_mid_epoch:
            done = load_checkpoint(output / "last.pt")["step"] if (output / "last.pt").is_file() else 0
            assert started_training(process, output, uri), process.text[-3000:]
            time.sleep(rng.uniform(0.05, 0.5) * training_s * (1 - done / total_steps))
            sig = (signal.SIGUSR1, signal.SIGTERM)[attempt % 2]
            if process.popen.poll() is None:
                pick_target(process).send_signal(sig)
        code = process.wait()
        text = process.text
        if code == 0:
            assert mid_epoch >= min_mid_epoch, (
                f"the run ended before {min_mid_epoch} stops within an epoch: {stops}"
            )
            return stops
        reports = PREEMPTED.findall(text)
        assert len(reports) == ranks, f"status {code}, every rank must report its stop:\n{text[-4000:]}"
        assert len(set(reports)) == 1, f"the ranks stopped at different steps: {reports}"
        if ranks == 1:
            assert code == EXIT_PREEMPTED and "Traceback" not in text, text[-3000:]
        else:  # torchrun fails (1) and lists its ranks' statuses: every one 75
            assert text.count("exitcode  : 75 ") == ranks, text[-3000:]
        name, step, epoch, batches = reports[0]
        assert name == sig.name
        state = load_checkpoint(output / "last.pt")
        assert state["step"] == int(step), "the checkpoint is at the step the stop reported"
        assert state["epoch"] == int(epoch) - 1
        assert bool(state.get("in_epoch")) == (int(batches) > 0)
        assert state["format"] == (2 if int(batches) else 1)
        if state.get("in_epoch"):
            assert state["in_epoch"]["batches"] == int(batches)
        stops.append({"signal": name, "step": int(step), "in_epoch": int(batches)})
    pytest.fail(f"the run never finished: {stops}")


# --- fast: the parts, in one process ----------------------------------------------------------


class RecordingDataset(torch.utils.data.Dataset):
    """Records every key it is asked to read (decode)."""

    def __init__(self):
        self.read: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return 10

    def __getitem__(self, key):
        self.read.append(key)
        return torch.tensor(key)


def test_a_run_resumed_mid_epoch_reads_only_the_items_it_had_not_trained_on():
    full = list(EpochBatchSampler(EpochSampler(10, 3, True, 1, 2), 2, 0, 3))
    sampler = EpochSampler(10, 3, True, 1, 2)
    sampler.resume_at(1, 2)  # rank 1 of 2, resumed in epoch 1 after one batch of 2
    batches = EpochBatchSampler(sampler, 2, 1, 3)
    assert list(batches) == full[3:] and len(batches) == len(full) - 3
    dataset = RecordingDataset()
    seen = [b.tolist() for b in DataLoader(dataset, batch_sampler=batches)]
    assert dataset.read == [key for batch in full[3:] for key in batch], "only the remaining items are read"
    assert [[tuple(k) for k in b] for b in seen] == full[3:]
    with pytest.raises(ValueError, match="whole batches"):
        sampler.resume_at(1, 3)
        list(EpochBatchSampler(sampler, 2, 1, 3))


def test_stop_signal_names_are_checked_before_any_compute(tiny_synth, tmp_path, mlflow_uri):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["runtime"]["stop_signals"] = ["SIGUSR1", "SIGKILL"]
    with pytest.raises(ConfigError, match=r"runtime.stop_signals .* signal names among SIGTERM, SIGUSR1"):
        pretrain(build_experiment(tree), output=tmp_path / "out", tracking_uri=mlflow_uri)
    assert not (tmp_path / "out").exists()
    for key, value in (("checkpoint_every", 0), ("checkpoint_seconds", 0.0), ("stop_signals", "SIGTERM")):
        with pytest.raises(ConfigError, match=f"runtime.{key}"):
            build_experiment({"runtime": {key: value}}, check_files=False)


def test_a_signal_stops_an_in_process_run_at_a_step_and_resume_is_bit_identical(
    tiny_synth, tmp_path, mlflow_uri
):
    """SIGUSR1 to this process at a random moment of `pretrain`: `Preempted`, a checkpoint at the
    step it stopped at, the MLflow run KILLED and tagged; resuming ends where a straight run ends."""
    exp = build_experiment(heavy_tree(tiny_synth, tmp_path, epochs=2))
    straight = pretrain(exp, output=tmp_path / "straight", tracking_uri=mlflow_uri, print_progress=False)
    training_s = sum(h["epoch_time"] for h in straight.history)
    rng = random.Random(SEED)
    output, stops = tmp_path / "split", []
    ignored = signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a timer firing between attempts: moot
    try:
        for _ in range(8):
            done = load_checkpoint(output / "last.pt")["step"] if (output / "last.pt").is_file() else 0
            left = training_s * (1 - done / load_checkpoint(straight.checkpoint)["step"])
            timer = threading.Timer(rng.uniform(0.05, 0.6) * left, os.kill, (os.getpid(), signal.SIGUSR1))
            try:
                result = pretrain(
                    exp,
                    output=output,
                    tracking_uri=mlflow_uri,
                    resume=True,
                    print_progress=False,
                    # training starts next; once a stop landed within an epoch, let it finish
                    on_run_start=None if any(stops) else lambda run_id, timer=timer: timer.start(),
                )
                break
            except Preempted as exc:
                state = load_checkpoint(output / "last.pt")
                assert f"at step {state['step']} " in str(exc) and "SIGUSR1" in str(exc)
                run = MlflowClient(mlflow_uri).get_run(state["run_id"])
                assert run.info.status == "KILLED" and run.data.tags["preempted"] == str(exc)
                stops.append(state.get("in_epoch", {}).get("batches", 0))
            finally:
                timer.cancel()
                if timer.is_alive():
                    timer.join()
        else:
            pytest.fail(f"never finished: {stops}")
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN, "the handler before is given back"
    finally:
        signal.signal(signal.SIGUSR1, ignored)
    assert any(stops), f"no stop landed within an epoch: {stops}"
    assert_same_training(straight.checkpoint, result.checkpoint, mlflow_uri)


def test_a_dead_workers_trial_is_failed_with_a_reason(tmp_path):
    """A RUNNING trial whose heartbeat went stale is failed with a failure_reason (it was None), and
    the copy re-queued carries none."""
    spec = parse_study({"name": "stale", "experiment": {}, "grid": {"data.clips": [1]},
                        "limits": {"heartbeat_interval": 1, "grace_period": 1, "max_retries": 1}},
                       check_files=False)  # fmt: skip
    study = open_study(spec, make_storage(f"sqlite:///{tmp_path}/optuna.db", spec))
    trial = study.ask()
    record_heartbeat(trial)
    time.sleep(2.5)  # the worker is gone: no more heartbeats
    fail_dead_trials(study)
    failed, retry = study.get_trials(deepcopy=False)
    assert failed.state == optuna.trial.TrialState.FAIL
    assert "stopped recording heartbeats for over 1 s" in failed.user_attrs["failure_reason"]
    assert retry.state == optuna.trial.TrialState.WAITING and "failure_reason" not in retry.user_attrs


# --- slow: real `rho` processes ------------------------------------------------------------


@pytest.mark.slow
def test_stop_signals_at_random_steps_then_resume_is_bit_identical(tiny_synth, tmp_path, mlflow_uri):
    """`rho pretrain --resume` gets SIGUSR1 or SIGTERM at random moments until stops have landed
    within epochs: each time it exits 75 with a checkpoint at the step it names; run to the end,
    every tensor, every epoch's metrics and every step's loss equal an uninterrupted run's."""
    config = write_config(tmp_path, heavy_tree(tiny_synth, tmp_path))
    base = [sys.executable, "-m", "harness", "pretrain", str(config), "--tracking-uri", mlflow_uri]
    straight = subprocess.run(
        base + ["--output", str(tmp_path / "straight")], cwd=REPO, capture_output=True, text=True
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    finished = load_checkpoint(tmp_path / "straight" / "last.pt")
    output = tmp_path / "split"
    stops = preempt_until_done(
        base + ["--resume", "--output", str(output)],
        output,
        mlflow_uri,
        sum(h["epoch_time"] for h in finished["history"]),
        finished["step"],
        random.Random(SEED),
        min_mid_epoch=2,
    )
    assert {s["signal"] for s in stops} == {"SIGUSR1", "SIGTERM"} or len(stops) < 2
    assert_same_training(tmp_path / "straight" / "last.pt", output / "last.pt", mlflow_uri)
    run = MlflowClient(mlflow_uri).get_run(load_checkpoint(output / "last.pt")["run_id"])
    assert "resumed_from_step" in run.data.tags


def torchrun(config: Path, output: Path, uri: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            "-m", "harness", "pretrain", str(config), "--resume", "--output", str(output),
            "--tracking-uri", uri]  # fmt: skip


@pytest.mark.slow
def test_two_gloo_ranks_stop_together_on_one_ranks_signal_and_resume_bit_identically(
    tiny_synth, tmp_path, mlflow_uri
):
    """Two ranks under torchrun; the signal goes to one of them, at random: both stop at the same
    step (they agree by an all-reduce at every step boundary) and exit 75, rank 0 writes the
    checkpoint; resumed, the run ends bit-identical to an uninterrupted two-rank run."""
    config = write_config(tmp_path, heavy_tree(tiny_synth, tmp_path, epochs=4, batch_size=4))
    straight = subprocess.run(
        torchrun(config, tmp_path / "straight", mlflow_uri), cwd=REPO, capture_output=True, text=True
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    finished = load_checkpoint(tmp_path / "straight" / "last.pt")
    rng = random.Random(SEED)
    victims = []

    def one_rank(process: Process) -> psutil.Process:
        ranks = psutil.Process(process.popen.pid).children()
        assert len(ranks) == 2, ranks
        victims.append(rng.randrange(2))
        return sorted(ranks, key=lambda p: p.pid)[victims[-1]]

    output = tmp_path / "split"
    stops = preempt_until_done(
        torchrun(config, output, mlflow_uri),
        output,
        mlflow_uri,
        sum(h["epoch_time"] for h in finished["history"]),
        finished["step"],
        rng,
        pick_target=one_rank,
        ranks=2,
    )
    assert stops and any(s["in_epoch"] for s in stops)
    assert_same_training(tmp_path / "straight" / "last.pt", output / "last.pt", mlflow_uri)


@pytest.mark.slow
def test_periodic_mid_epoch_checkpoints_survive_sigkill(tiny_synth, tmp_path, mlflow_uri):
    """`runtime.checkpoint_every: 2`: a SIGKILL after a mid-epoch checkpoint loses only the steps
    since; `--resume` goes on from it (mid-epoch) and ends bit-identical to an uninterrupted run."""
    tree = heavy_tree(tiny_synth, tmp_path, epochs=3)
    config = write_config(tmp_path, tree)
    tree["runtime"]["checkpoint_every"] = 2
    periodic = write_config(tmp_path, tree, "periodic.yaml")
    base = ["pretrain", "--tracking-uri", mlflow_uri]
    straight = subprocess.run([sys.executable, "-m", "harness", base[0], str(config), *base[1:], "--output",
                               str(tmp_path / "straight")], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-3000:]
    output = tmp_path / "killed"
    command = [sys.executable, "-m", "harness", "pretrain", str(periodic), "--resume", "--output", str(output),
               "--tracking-uri", mlflow_uri]  # fmt: skip
    process = Process(command)
    deadline, state = time.monotonic() + 300, None
    while time.monotonic() < deadline and process.popen.poll() is None:
        if (output / "last.pt").is_file():
            state = load_checkpoint(output / "last.pt")
            if state.get("in_epoch") and state["step"] >= 3:
                break
        time.sleep(0.02)
    process.popen.send_signal(signal.SIGKILL)
    process.wait()
    assert state is not None and state["format"] == 2 and state["step"] % 2 == 0, process.text[-3000:]
    again = Process(command)
    assert again.wait() == 0, again.text[-3000:]
    assert "resuming" in again.text and "without reading the videos it already trained on" in again.text
    assert_same_training(
        tmp_path / "straight" / "last.pt", output / "last.pt", mlflow_uri, repeated_steps=True
    )


def study_spec(
    tmp_path: Path, tiny_synth, name: str, points: list, epochs: int = 4, width: int = 48, **extra
) -> Path:
    experiment = heavy_tree(tiny_synth, tmp_path, epochs=epochs, batch_size=4)
    experiment["backbone"]["width"] = width
    spec = {
        "name": name,
        "experiment": experiment,
        "grid": {"optim.lr": points},
        "seeds": [0],
        "objective": {"metric": "loss", "direction": "minimize"},
        "limits": {"heartbeat_interval": 1, "grace_period": 30, "max_retries": 1},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def study_run(spec: Path, storage: str, uri: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "study", "run", str(spec), "--storage", storage,
            "--tracking-uri", uri, *extra]  # fmt: skip


@pytest.mark.slow
def test_a_stopped_study_requeues_its_trial_and_the_retry_resumes_mid_epoch(tiny_synth, tmp_path, mlflow_uri):
    """SIGUSR1 to `rho study run --gpus-per-trial 2` (its trial a torchrun job of two gloo ranks): the
    worker passes it on, the ranks stop at one step with a checkpoint, the trial goes back to the
    queue (WAITING, not FAILED) and the command exits 75; run again, the trial resumes at that step
    in the same MLflow run and finishes as an uninterrupted run would."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    spec = study_spec(
        tmp_path, tiny_synth, "preempted", [0.05], epochs=6, width=96
    )  # steps of ~0.1 s or more
    config = tmp_path / "straight.yaml"  # the trial's experiment, trained without a stop
    config.write_text(load_study(spec).experiment({"optim.lr": 0.05}, 0).to_yaml())
    straight = subprocess.run(
        torchrun(config, tmp_path / "straight", mlflow_uri), cwd=REPO, capture_output=True, text=True
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    finished = load_checkpoint(tmp_path / "straight" / "last.pt")
    training_s = sum(h["epoch_time"] for h in finished["history"])
    rng = random.Random(SEED)
    output, stops = tmp_path / "checkpoints" / "preempted", []
    for _attempt in range(5):
        last = [load_checkpoint(path) for path in output.glob("*/last.pt")]
        left = 1 - (last[0]["step"] if last else 0) / finished["step"]
        process = Process(study_run(spec, storage, mlflow_uri, "--gpus-per-trial", "2"))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.popen.poll() is None:  # until the run trains
            if not last and list(output.glob("*/run.json")):  # a new run: written as it opens
                break
            if last and MlflowClient(mlflow_uri).get_run(last[0]["run_id"]).info.status == "RUNNING":
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.1, 0.5) * training_s * left)
        process.popen.send_signal(signal.SIGUSR1)
        code = process.wait()
        assert code == EXIT_PREEMPTED, process.text[-4000:]
        state = load_checkpoint(next(output.glob("*/last.pt")))
        stops.append((state["step"], state.get("in_epoch", {}).get("batches", 0)))
        if state.get("in_epoch"):
            break
    else:
        pytest.fail(
            f"no stop landed within an epoch: (step, batches) {stops}; {training_s:.1f} s of training"
        )
    assert "stopped and re-queued" in process.text and "re-queued and resume" in process.text
    study = optuna.load_study(study_name="preempted", storage=storage)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.WAITING, "re-queued, not failed"
    assert "SIGUSR1" in trial.user_attrs["preempted"] and "failure_reason" not in trial.user_attrs
    client = MlflowClient(mlflow_uri)
    killed = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert killed.info.status == "KILLED" and "SIGUSR1" in killed.data.tags["preempted"]

    again = Process(study_run(spec, storage, mlflow_uri, "--gpus-per-trial", "2"))
    assert again.wait() == 0, again.text[-4000:]
    assert "(resuming) after a stop signal" in again.text
    assert f"in epoch {state['epoch'] + 1} after step {state['in_epoch']['batches']} of" in again.text
    study = optuna.load_study(study_name="preempted", storage=storage)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED", "the same run went on"

    assert_same_training(tmp_path / "straight" / "last.pt", next(output.glob("*/last.pt")), mlflow_uri)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGUSR1"])
def test_workers_of_a_killed_study_run_stop_and_requeue_their_trials(how, tiny_synth, tmp_path, mlflow_uri):
    """SIGKILL `rho study run --workers 2` while both workers train: they get SIGTERM from the kernel
    (the parent-death signal), stop at a step with a checkpoint, put their trials back in the queue
    and exit within seconds instead of running on to the end of their trials. SIGUSR1 instead (what
    SLURM sends the batch script): passed to both workers, the same, and `rho study run` exits 75."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    spec = study_spec(tmp_path, tiny_synth, "orphans", [0.05, 0.02], epochs=60)
    log = (tmp_path / "run.log").open("w")  # not a pipe: the workers write to it after the parent is gone
    parent = subprocess.Popen(study_run(spec, storage, mlflow_uri, "--workers", "2"), cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    output = tmp_path / "checkpoints" / "orphans"
    deadline = time.monotonic() + 300
    while len(list(output.glob("*/run.json"))) < 2 and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.05)
    assert len(list(output.glob("*/run.json"))) == 2, (tmp_path / "run.log").read_text()[-3000:]
    time.sleep(1.0)
    workers = psutil.Process(parent.pid).children()
    assert len(workers) == 2
    parent.send_signal(getattr(signal, how))
    code = parent.wait(timeout=120)
    log.close()
    assert code == (-signal.SIGKILL if how == "SIGKILL" else EXIT_PREEMPTED), code
    killed = time.monotonic()
    try:
        while time.monotonic() - killed < 60 and any(running(p) for p in workers):
            time.sleep(0.05)
    finally:
        took = time.monotonic() - killed
        for worker in workers:  # the ones this test started, should they run on
            if running(worker):
                worker.kill()
    assert not any(running(p) for p in workers), "workers still run after their parent was killed"
    assert took < 15, f"the workers took {took:.1f} s to stop"  # without the parent-death signal: ~20 s
    text = (tmp_path / "run.log").read_text()
    assert text.count("stopped and re-queued") == 2, text[-4000:]
    study = optuna.load_study(study_name="orphans", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.WAITING] * 2, "re-queued, none failed"
    signal_name = (
        "SIGTERM" if how == "SIGKILL" else how
    )  # the kernel's parent-death signal, or the one passed on
    assert all(signal_name in t.user_attrs["preempted"] for t in study.trials)
    for folder in output.iterdir():  # each left a checkpoint where it stopped, for the next run
        assert load_checkpoint(folder / "last.pt")["step"] > 0
    print(f"workers stopped {took:.1f} s after their parent was killed")


def running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE  # a zombie has exited; nobody reaped it yet
    except psutil.NoSuchProcess:
        return False


def test_worker_exit_statuses_combine_to_the_worst():
    from harness.study.launch import worst_exit_status

    assert worst_exit_status([0, 0]) == 0
    assert worst_exit_status([0, EXIT_PREEMPTED]) == EXIT_PREEMPTED
    assert worst_exit_status([1, EXIT_PREEMPTED]) == 1
    assert worst_exit_status([-signal.SIGKILL, 0]) == 128 + signal.SIGKILL
