"""What a protocol run gets besides the encoder and the benchmark: where it runs and how, and
where it notes the videos it could not read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.data.manifest import ManifestError
from harness.runtime import Runtime

MAX_UNREADABLE = 0.1  # the share of a manifest's videos evaluation may skip; more is refused


@dataclass(frozen=True)
class Skipped:
    """The unreadable videos of one manifest that a protocol passed over.

    Attributes:
        manifest: the manifest (a benchmark's ``train`` or ``val``).
        videos: its rows.
        files: the unreadable videos, each with why (empty when the reader did not say).
    """

    manifest: Path
    videos: int
    files: dict[Path, str]

    def first(self) -> str:
        """The first unreadable video, with why when known."""
        path, why = next(iter(self.files.items()))
        return f"{path} ({why.removeprefix(f'{path}: ')})" if why else str(path)

    def summary(self) -> str:
        """One line for the user: how many, the first, and the command that lists them all."""
        return (
            f"{len(self.files)} of {self.videos} videos of {self.manifest} skipped (unreadable): "
            f"first: {self.first()}; run `rho data check {self.manifest}`"
        )


@dataclass(frozen=True)
class EvalContext:
    """The settings ``evaluate`` hands every protocol, and the record of what it skipped.

    Attributes:
        runtime: the device, with bf16 autocast and channels_last_3d on CUDA.
        encoder_key: names the encoder in the feature cache (e.g. a run's config hash).
        cache_dir: the feature cache folder (frozen protocols only).
        workers: DataLoader decoding processes.
        seed: the classifier's initialisation, data order and augmentation.
        progress: print progress bars.
        batch_size: videos per forward pass when extracting features (each with all its views).
        decoder: the decoding backend's name (``data.decoder``: pyav or torchcodec).
        skipped: filled by the protocol (``note_skipped``): the unreadable videos it passed over.
    """

    runtime: Runtime
    encoder_key: str
    cache_dir: Path
    workers: int = 0
    seed: int = 0
    progress: bool = True
    batch_size: int = 8
    decoder: str = "pyav"
    skipped: list[Skipped] = field(default_factory=list)

    def note_skipped(self, manifest: Path, videos: int, files: dict[Path, str]) -> None:
        """Record the unreadable ``files`` among a manifest's ``videos``.

        Raises:
            ManifestError: more than ``MAX_UNREADABLE`` of the videos are unreadable: an
                accuracy over the rest would not be comparable with others on the benchmark.
        """
        if not files:
            return
        skipped = Skipped(Path(manifest), videos, dict(files))
        if len(files) > MAX_UNREADABLE * videos:
            raise ManifestError(
                f"{manifest}: {len(files)} of {videos} videos are unreadable, more than evaluation "
                f"skips ({MAX_UNREADABLE:.0%}); first: {skipped.first()}; run `rho data check {manifest}` "
                "and repair the files or remove their rows"
            )
        self.skipped.append(skipped)

    def skipped_files(self) -> set[Path]:
        """Every unreadable video noted, once (a manifest may serve as both train and val)."""
        return {path for record in self.skipped for path in record.files}
