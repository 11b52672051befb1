"""Where a run executes: device, precision and the process group under torchrun.

``torchrun --nproc_per_node=N -m harness pretrain ...`` sets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``; ``Runtime.setup`` then joins the process group (NCCL on CUDA, gloo on CPU),
and each rank takes GPU ``LOCAL_RANK``. Without those variables it is one process.

Stop signals (``runtime.stop_signals``, SIGTERM and SIGUSR1 by default: what SLURM sends before
a time limit or a preemption): inside ``stop_signals`` such a signal only records that a stop
was asked for (``stop_requested``); the training loop then stops every rank at the same step
boundary, writes a checkpoint there and raises ``Preempted``, and ``rho`` exits with
``EXIT_PREEMPTED`` (75).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from harness.config import ConfigError, RuntimeConfig

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): stopped on a signal after a checkpoint; run it again
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGINT")  # what runtime.stop_signals allows


class Preempted(Exception):
    """A stop signal arrived: the run stopped at a step boundary after writing its checkpoint there.

    ``rho`` exits with ``EXIT_PREEMPTED``; ``--resume`` (a study: running it again) continues at that
    step, bit-identical to a run that was never stopped.
    """

    exit_status = EXIT_PREEMPTED

    def __init__(self, message: str, signum: int = 0):
        super().__init__(message)
        self.signum = signum


_stop: dict[str, int] = {"signal": 0, "depth": 0}  # the signal received (0: none); nesting of stop_signals


def signal_numbers(names: Sequence[str]) -> list[signal.Signals]:
    """The signals named in ``runtime.stop_signals``.

    Raises:
        ConfigError: a name that is not one of ``STOP_SIGNALS``.
    """
    for name in names:
        if name not in STOP_SIGNALS or not hasattr(signal, name):
            raise ConfigError(
                "runtime.stop_signals", list(names), f"signal names among {', '.join(STOP_SIGNALS)}"
            )
    return [getattr(signal, name) for name in dict.fromkeys(names)]


def stop_requested() -> int:
    """The stop signal this process received inside ``stop_signals`` (0: none)."""
    return _stop["signal"]


def request_stop(signum: int, frame: object = None) -> None:
    """Record a stop request (what the signal handler does); the first signal is the one reported."""
    _stop["signal"] = _stop["signal"] or int(signum)


@contextlib.contextmanager
def stop_signals(names: Sequence[str], on_signal: Callable[[int], None] | None = None) -> Iterator[None]:
    """While inside, the signals ``names`` ask for a stop (``stop_requested``) instead of ending the
    process; ``on_signal`` (e.g. forwarding the signal to a child) runs on each. The previous
    handlers come back on exit; the outermost ``stop_signals`` starts and ends with no request
    pending. Outside the main thread (where Python cannot take signals) this does nothing.
    """
    numbers = signal_numbers(names)
    if threading.current_thread() is not threading.main_thread():
        log.debug("stop signals not installed: not the main thread")
        yield
        return

    def handler(signum: int, frame: object) -> None:
        request_stop(signum)
        if on_signal is not None:
            on_signal(signum)

    if _stop["depth"] == 0:
        _stop["signal"] = 0
    previous = {number: signal.signal(number, handler) for number in numbers}
    _stop["depth"] += 1
    try:
        yield
    finally:
        _stop["depth"] -= 1
        for number, old in previous.items():
            signal.signal(number, old)
        if _stop["depth"] == 0:
            _stop["signal"] = 0


@contextlib.contextmanager
def command_stop_signals(names: Sequence[str]) -> Iterator[None]:
    """``stop_signals`` for the rest of a command's process: inside, a signal asks for a stop; after,
    the work is over and the signals are ignored for the moments the process takes to exit (Python
    puts its handlers back to the default, killing, action while it finalizes, and a launcher such
    as torchrun signals the ranks that have not exited yet), so that the exit status stays the one
    the command returned."""
    numbers = signal_numbers(names)
    try:
        with stop_signals(names):
            yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for number in numbers:
                signal.signal(number, signal.SIG_IGN)


def signal_name(signum: int) -> str:
    """``SIGUSR1`` for its number."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


Device = str | torch.device


@dataclass(frozen=True)
class Runtime:
    """The resolved execution context of this process."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    bf16: bool = False
    channels_last: bool = False
    owns_process_group: bool = False  # setup joined the process group (so teardown leaves it)

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def setup(cls, config: RuntimeConfig) -> Runtime:
        """Pick the device and precision; join the process group when launched by torchrun."""
        signal_numbers(config.stop_signals)  # a bad name fails here, before any compute
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        if config.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                "runtime.device = 'cuda' but no CUDA device is visible; use runtime.device=cpu or auto"
            )
        if use_cuda:
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            device = torch.device("cpu")
        joins = world_size > 1 and not dist.is_initialized()
        if joins:
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None
            )
        bf16 = config.precision == "bf16" or (config.precision == "auto" and use_cuda)
        return cls(
            device,
            rank,
            world_size,
            local_rank,
            bf16=bf16,
            channels_last=use_cuda and config.channels_last,
            owns_process_group=joins,
        )

    @classmethod
    def for_device(cls, device: Device) -> Runtime:
        """One process on ``device``: bf16 autocast and channels_last_3d on CUDA, fp32 elsewhere (evaluation)."""
        device = torch.device(device)
        on_cuda = device.type == "cuda"
        return cls(device, bf16=on_cuda, channels_last=on_cuda)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where enabled, else nothing."""
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, batch: dict) -> dict:
        """Move a batch's tensors to the device (asynchronously from pinned memory)."""
        return {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }

    def clips_to_device(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips [B, C, T, H, W] on the device (asynchronously from pinned memory), channels_last_3d where enabled."""
        clips = clips.to(self.device, non_blocking=True)
        return clips.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else clips

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move a model to the device, in channels_last_3d where enabled (CUDA)."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last_3d) if self.channels_last else model

    def teardown(self) -> None:
        """Leave the process group that ``setup`` joined; one that the caller made stays."""
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
