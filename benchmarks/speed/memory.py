"""Peak memory of one training step vs ρ, standard vs low-memory mode, with the gradients compared.

Each (method, ρ, mode) runs in its own process (``python memory.py child SPEC``): the model and
the batch are built, then one step (forward, loss, backward) runs and its peak memory above
what the process held before it (model and batch) is read — on CUDA
``max_memory_allocated`` after ``reset_peak_memory_stats``; on CPU the kernel's peak RSS
(VmHWM, reset through /proc/self/clear_refs) with glibc told to serve every allocation above
64 KiB by mmap, so that freed tensors leave the RSS at once and the peak is the step's. The
child saves its gradients; the parent checks that low-memory mode gives the same gradients
as standard mode at every ρ.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import torch

from harness.speed import Check, SpeedContext, SpeedResult
from harness.speed.environment import usable_cores

TITLE = "peak memory of a training step for ρ = 2, 3, 4: standard vs low-memory mode"
GOAL = "low-memory mode at ρ = 4 at most 1.3x its own ρ = 2, with the same gradients as standard mode"
ORDER = 4
PARAMS = {"methods": "comma-separated methods (default simclr,swav,moco,byol; quick simclr)"}

HEADS = {
    "simclr": {"hidden_dims": [256], "out_dim": 64},
    "swav": {"hidden_dims": [256], "out_dim": 64, "num_prototypes": 64},
    "moco": {"hidden_dims": [256], "out_dim": 64, "queue_size": 1024},
    "byol": {"projector_hidden_dims": [256], "out_dim": 64, "predictor_hidden_dims": [256]},
}


def child(spec: dict) -> dict:
    """One step of ``spec`` in this process; its peak memory; gradients saved to ``spec['grads']``."""
    import methods as method_registry
    from harness import backbones
    from harness.speed.media import peak_rss_bytes, reset_peak_rss, rss_bytes

    torch.set_num_threads(1)
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    backbone, feature_dim = backbones.build("r3d_tiny", width=spec["width"])
    params = {"memory": spec["mode"], **HEADS[spec["method"]]}
    method = method_registry.build(spec["method"], backbone, feature_dim, **params).to(device).train()
    generator = torch.Generator().manual_seed(1)
    shape = (spec["batch"], spec["rho"], 3, spec["frames"], spec["crop"], spec["crop"])
    batch = {
        "clips": torch.randn(shape, generator=generator).to(device),
        "label": torch.zeros(spec["batch"], dtype=torch.long, device=device),
        "index": torch.arange(spec["batch"], device=device),
    }
    _step(method, batch)  # warm-up: one-time allocations (thread pools, kernels) are not the step's
    method.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = rss_bytes()
        exact = reset_peak_rss()
    _step(method, batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        exact = True
    else:
        peak = peak_rss_bytes() - before
    grads = {name: p.grad.detach().cpu() for name, p in method.named_parameters() if p.grad is not None}
    torch.save(grads, spec["grads"])
    return {"peak_bytes": peak, "exact_peak": exact, "batch_bytes": batch["clips"].numel() * 4}


def _step(method: torch.nn.Module, batch: dict) -> None:
    out = method.training_step(batch)
    if not out.backward_done:
        out.loss.backward()


def _spawn(spec: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, __file__, "child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"memory child {spec['method']} ρ={spec['rho']} {spec['mode']} failed:\n{completed.stderr[-3000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def gradient_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max |a - b| / max |a| over all parameters (inf when they have different parameters)."""
    if a.keys() != b.keys():
        return float("inf")
    scale = max(float(g.abs().max()) for g in a.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / max(scale, 1e-30)


def run(ctx: SpeedContext) -> SpeedResult:
    quick = ctx.quick
    methods = ctx.param("methods", "simclr" if quick else "simclr,swav,moco,byol", str).split(",")
    unknown = [m for m in methods if m not in HEADS]
    if unknown:
        raise ValueError(f"--param methods: unknown method {unknown[0]!r}; known: {', '.join(HEADS)}")
    rhos = (2, 4) if quick else (2, 3, 4)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = dict(batch=4, frames=2, crop=16, width=4) if quick else dict(batch=16, frames=8, crop=64, width=16)
    result = ctx.result(
        ["method", "ρ", "standard MiB", "low MiB", "low / standard", "grad rel. diff", "batch MiB"]
    )
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        specs = {
            (method, rho, mode): dict(
                size,
                method=method,
                rho=rho,
                mode=mode,
                device=device,
                grads=f"{tmp}/{method}-{rho}-{mode}.pt",
            )
            for method in methods
            for rho in rhos
            for mode in ("standard", "low")
        }
        # separate processes, so they may run side by side (one at a time on a GPU)
        with ThreadPoolExecutor(max_workers=1 if device == "cuda" else usable_cores()) as pool:
            measured = dict(zip(specs, pool.map(_spawn, specs.values()), strict=True))
        for method in methods:
            for rho in rhos:
                peaks = {mode: measured[method, rho, mode] for mode in ("standard", "low")}
                grads = {
                    mode: torch.load(specs[method, rho, mode]["grads"], weights_only=True)
                    for mode in ("standard", "low")
                }
                mib = {mode: peaks[mode]["peak_bytes"] / 2**20 for mode in peaks}
                result.rows.append(
                    [
                        method,
                        rho,
                        mib["standard"],
                        mib["low"],
                        mib["low"] / mib["standard"],
                        gradient_difference(grads["standard"], grads["low"]),
                        peaks["low"]["batch_bytes"] / 2**20,
                    ]
                )
    for method in methods:
        low2 = result.row(method=method, **{"ρ": 2})["low MiB"]
        low4 = result.row(method=method, **{"ρ": 4})["low MiB"]
        std2 = result.row(method=method, **{"ρ": 2})["standard MiB"]
        std4 = result.row(method=method, **{"ρ": 4})["standard MiB"]
        result.checks.append(Check(f"{method} low ρ=4 / ρ=2", low4 / low2, "<=", 1.3))
        result.notes.append(f"{method}: standard mode ρ=4 / ρ=2 = {std4 / std2:.2f}x (for comparison)")
    result.checks.append(
        Check("gradients low vs standard (rel.)", max(r[5] for r in result.rows), "<=", 1e-4, "")
    )
    result.notes.insert(
        0,
        f"{device.upper()}; r3d_tiny width {size['width']}, T = {size['frames']}, crop {size['crop']}, batch "
        f"{size['batch']} videos; peak = the step's peak above the model and batch already in memory "
        f"({'max_memory_allocated' if device == 'cuda' else 'VmHWM - VmRSS, glibc mmap threshold 64 KiB'}).",
    )
    return result


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "child":
    print(json.dumps(child(json.loads(sys.argv[2]))))
