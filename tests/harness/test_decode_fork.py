"""Decoding in a process, then forking DataLoader workers that decode too, must not deadlock.

The per-thread swscale context of ``harness.data.decode`` used to be inherited by forked
workers together with its (not inherited) thread pool, and the workers hung in their first
RGB conversion. The check runs in a child process with a timeout so that a regression fails
instead of hanging the suite.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys, torch
from torch.utils.data import DataLoader
from harness.data import MultiClipDataset
dataset = MultiClipDataset(sys.argv[1], clips=2, frames=2, stride=2)
dataset[0]  # the parent decodes first
loader = DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context="fork")
print(sum(batch["clips"].shape[0] for batch in loader))
"""


def test_workers_decode_after_the_parent_did(tiny_synth):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_synth["train"])], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "12"  # every video of the tiny dataset
