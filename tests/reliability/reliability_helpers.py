"""Shared pieces of the reliability tests: the tiny experiment of tests/tiny_data.py, the `rho` command,
bad video files, private mounts (a full disk, a read-only folder) and an MLflow server that can
be stopped and restarted on the same port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
from tiny_data import tiny_experiment_tree  # noqa: F401  (tests/ is on sys.path: tests/conftest.py)
from videos import index_frame, write_audio_only

REPO = Path(__file__).resolve().parents[2]


def rho(*args: str, env: dict | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m harness ARGS`` from the repository root (a hang fails the test at ``timeout``)."""
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def error_line(result: subprocess.CompletedProcess, code: int) -> str:
    """The single ``rho: error:`` line of a failed command; asserts the exit status and no traceback."""
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == code, output
    assert "Traceback" not in result.stderr, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("rho: error:")]
    assert len(errors) == 1, output
    return errors[0]


def env_with(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


# --- bad video files -------------------------------------------------------------------------


def write_vfr_index_video(path: Path, times: list[float], size: int = 64) -> Path:
    """A variable-frame-rate H.264 mp4: frame i shows i and is presented at ``times[i]`` seconds."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264", rate=Fraction(10), options={"crf": "18", "preset": "veryfast", "threads": "1"}
        )
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(index_frame(i, size), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def bad_videos(folder: Path, good: Path) -> dict[str, Path]:
    """Corrupt, truncated, zero-length and audio-only files (``good`` is cut for the truncated one)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "corrupt": folder / "corrupt.mp4",
        "truncated": folder / "truncated.mp4",
        "empty": folder / "empty.mp4",
        "audio": write_audio_only(folder / "audio.mp4"),
    }
    files["corrupt"].write_bytes(b"\x00\x00\x00\x18ftypmp42garbage" * 300)
    data = good.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["empty"].touch()
    return files


# --- private mounts: a full disk and a read-only folder, without touching the machine --------


def private_mounts_available() -> bool:
    """Whether ``unshare`` can give this process a private mount namespace (no root needed)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


def in_private_mounts(script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a shell script in a private user and mount namespace: its mounts vanish with it."""
    if not private_mounts_available():
        pytest.skip("unshare cannot create a private mount namespace here")
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- an MLflow tracking server that can be killed and restarted -------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:port over a sqlite backend; ``stop`` kills it, ``start`` brings it back."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.backend = f"sqlite:///{folder / 'server.db'}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, wait: float = 180) -> MlflowServer:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--backend-store-uri", self.backend, "--workers", "1"]
        command += ["--default-artifact-root", str(self.folder / "artifacts")]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                import urllib.request

                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        pytest.fail("mlflow server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None


def same(a, b) -> bool:
    import torch

    """Exact equality of nested checkpoint state (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b
