"""A run's compute cost: wall-clock and device seconds, training FLOPs, clips seen, bytes decoded.

Logged to MLflow as ``cost.*`` metrics at every epoch end (step = epoch) and once more when the
run ends, and kept in every checkpoint (``RunCost.state``), so that a resumed run carries on its
totals instead of starting them again:

- ``cost.wall_seconds``: wall-clock seconds spent training (the epochs: data loading, steps, the
  kNN monitor and the checkpoints; not the set-up nor the final evaluation, which is
  ``cost.eval_seconds``), summed over the sessions of a resumed run.
- ``cost.device_seconds``: ``cost.wall_seconds`` × the devices that trained (the world size: one
  GPU per rank, or on CPU one process per rank whatever its cores; a CPU "device" is a process).
- ``cost.step_flops``: FLOPs of one training step on one device (forward and backward of the
  method's ``training_step`` on the run's first batch, counted by ``torch.utils.flop_counter
  .FlopCounterMode``: matrix multiplies and convolutions, the operations it knows).
- ``cost.flops_per_clip``: ``cost.step_flops`` / the clips of that step (videos × views).
- ``cost.train_flops``: ``cost.step_flops`` × devices × the steps trained (so far).
- ``cost.clips_seen``: clips trained on, over every device (videos × views per step, V = max(ρ, the method's `min_clips`)).
- ``cost.bytes_decoded``: compressed bytes the data loader decoded for those clips (PyAV's
  demuxed packets; the file size for another decoder; 0 for frames from ``data.cache``), counted
  on rank 0 and × the world size on more devices (each rank reads its own share).
- ``cost.eval_seconds``: wall-clock seconds of the final evaluation (rank 0).

The FLOP count runs on a copy of the method under a forked RNG, outside the timed steps, so that
training is bit-identical with and without it.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch

log = logging.getLogger(__name__)

PREFIX = "cost."


class RunCost:
    """The running totals of a run's cost; ``state`` goes into checkpoints, ``metrics`` into MLflow."""

    def __init__(self, world_size: int, state: dict[str, Any] | None = None):
        state = state or {}
        self.world_size = world_size
        self.wall_before = float(state.get("wall_seconds", 0.0))  # earlier sessions
        self.device_before = float(state.get("device_seconds", 0.0))
        self.clips = int(state.get("clips_seen", 0))
        self.bytes = int(state.get("bytes_decoded", 0))
        flops = state.get("step_flops")
        self.step_flops: float | None = float(flops) if flops is not None else None
        clips = state.get("step_clips")
        self.step_clips: int | None = int(clips) if clips is not None else None
        self.eval_seconds: float | None = None
        self.started: float | None = None
        self.excluded = 0.0  # seconds of this session not counted (the FLOP count)
        self.tried_flops = False  # counted (or failed to) in this session

    def start(self) -> None:
        """This session's training starts (its clock runs until ``stop``)."""
        self.started, self.excluded = time.perf_counter(), 0.0

    def stop(self) -> None:
        """This session's training ended: its seconds join the earlier sessions'."""
        session = self._session()
        self.wall_before += session
        self.device_before += session * self.world_size
        self.started = None

    def _session(self) -> float:
        if self.started is None:
            return 0.0
        return max(0.0, time.perf_counter() - self.started - self.excluded)

    def add_batch(self, clips: int, bytes_read: int) -> None:
        """One step's clips over every device and this rank's bytes decoded (× the world size)."""
        self.clips += clips
        self.bytes += bytes_read * self.world_size

    def count_flops(self, method: torch.nn.Module, batch: dict, autocast) -> None:
        """FLOPs of one training step (forward and backward) of ``method`` on ``batch``, counted on a
        copy of the method with the RNG states restored after, and left out of the wall time. Every
        rank counts (a method may all-gather in its step); a failure only warns."""
        if self.step_flops is not None or self.tried_flops:
            return
        self.tried_flops = True
        from torch.utils.flop_counter import FlopCounterMode

        began = time.perf_counter()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        devices = [torch.cuda.current_device()] if cuda else []
        try:
            with torch.random.fork_rng(devices=devices):
                twin = copy.deepcopy(method)
                twin.train()
                own = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                with FlopCounterMode(display=False) as counter:
                    with autocast():
                        out = twin.training_step(own)
                    if not out.backward_done:
                        out.loss.backward()
                del twin, out, own
            self.step_flops = float(counter.get_total_flops())
            clips = batch["clips"]
            self.step_clips = int(clips.shape[0] * clips.shape[1])
        except Exception as exc:  # e.g. out of memory for the copy: the run goes on without FLOPs
            log.warning("could not count the training FLOPs (cost.*flops not logged): %s", exc)
            self.step_flops, self.step_clips = None, None
        finally:
            self.excluded += time.perf_counter() - began

    def state(self) -> dict[str, Any]:
        """The totals so far, for a checkpoint."""
        session = self._session()
        return {
            "wall_seconds": self.wall_before + session,
            "device_seconds": self.device_before + session * self.world_size,
            "clips_seen": self.clips,
            "bytes_decoded": self.bytes,
            "step_flops": self.step_flops,
            "step_clips": self.step_clips,
        }

    def metrics(self, steps: int) -> dict[str, float]:
        """The ``cost.*`` metrics after ``steps`` global steps."""
        state = self.state()
        out = {
            "wall_seconds": state["wall_seconds"],
            "device_seconds": state["device_seconds"],
            "clips_seen": float(self.clips),
            "bytes_decoded": float(self.bytes),
        }
        if self.step_flops is not None:
            out["step_flops"] = self.step_flops
            out["train_flops"] = self.step_flops * self.world_size * steps
            if self.step_clips:
                out["flops_per_clip"] = self.step_flops / self.step_clips
        if self.eval_seconds is not None:
            out["eval_seconds"] = self.eval_seconds
        return {f"{PREFIX}{k}": float(v) for k, v in out.items()}
