"""``rho data``: synthesise, check, inspect, profile, transcode and import video datasets."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cli.common import UserError

if TYPE_CHECKING:
    from harness.data.synth import SynthSpec


def synth_spec(args: argparse.Namespace) -> SynthSpec:
    """The ``SynthSpec`` that ``rho data synth``'s options ask for (options left out keep its defaults)."""
    from harness.data.synth import SynthSpec

    optional = {"drift": args.drift, "cue_interval": args.cue_interval, "cue_strength": args.cue_strength}
    try:
        return SynthSpec(
            train_videos=args.train,
            val_videos=args.val,
            classes=args.classes,
            duration=args.duration,
            fps=args.fps,
            size=args.size,
            seed=args.seed,
            constant_nuisance=args.constant_nuisance,
            cue=args.cue,
            **{name: value for name, value in optional.items() if value is not None},
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _data_synth(args: argparse.Namespace) -> int:
    from harness.data.synth import synthesize
    from harness.progress import ProgressBar

    spec = synth_spec(args)
    started = time.monotonic()
    bar = ProgressBar("synth", args.train + args.val, log_every=100)
    paths = synthesize(
        args.out, spec, workers=args.workers, progress=lambda done, total: bar.update(done, {})
    )
    print(f"dataset in {args.out} ({time.monotonic() - started:.1f} s)")
    for split, path in paths.items():
        print(f"  {split:5} manifest: {path}")
    return 0


def _add_synth_parser(data: argparse._SubParsersAction) -> None:
    synth = data.add_parser(
        "synth",
        help="generate the synthetic dataset (H.264 mp4 + manifests)",
        description="Generate a labelled synthetic video dataset: a class-defining object whose pose, "
        "motion, scale, colour, lighting, background and occluders drift over time. Cached: the same "
        "options on an existing dataset do nothing.",
    )
    synth.add_argument("out", help="output folder (videos/, train.csv, val.csv, classes.txt)")
    synth.add_argument("--train", type=int, default=320, help="training videos (default 320)")
    synth.add_argument("--val", type=int, default=480, help="validation videos (default 480)")
    synth.add_argument("--classes", type=int, default=8, help="classes (default 8)")
    synth.add_argument("--duration", type=float, default=4.0, help="seconds per video (default 4)")
    synth.add_argument("--fps", type=int, default=16, help="frame rate (default 16)")
    synth.add_argument("--size", type=int, default=64, help="frame side in pixels, even (default 64)")
    synth.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same files")
    synth.add_argument(
        "--constant-nuisance", action="store_true", help="the control: nuisances constant within each video"
    )
    synth.add_argument(
        "--drift",
        type=float,
        help="how far nuisances move towards a fresh draw at each keyframe, 0..1 (default: the demo's)",
    )
    synth.add_argument(
        "--cue",
        choices=("none", "grating", "flicker", "blobs"),
        default="flicker",
        help="an easy per-instance cue redrawn every --cue-interval seconds, which two augmentations of "
        "one clip share and clips in different cue segments do not (default flicker: the demo's data; "
        "none: no cue)",
    )
    synth.add_argument("--cue-interval", type=float, help="seconds between the cue's redraws (default 0.5)")
    synth.add_argument(
        "--cue-strength",
        type=float,
        help="scales the cue's swing: the flicker's depth (0.375-0.875 times it, below 1.14) or the "
        "grating's amplitude (default 1)",
    )
    synth.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    synth.set_defaults(func=_data_synth)


def _data_check(args: argparse.Namespace) -> int:
    from harness.data.check import iter_check
    from harness.data.manifest import read_manifest
    from harness.progress import ProgressBar

    entries = read_manifest(args.manifest, check_files=False, allow_outside_root=args.allow_outside_root)
    # Verdicts print as they arrive (stdout); the progress bar goes to stderr, so that
    # `rho data check M > bad.txt` keeps only the BAD and TURNED lines.
    bar = ProgressBar("check", len(entries), stream=sys.stderr, log_every=1000)
    checked = bad = 0
    for checked, result in enumerate(iter_check(entries, full=args.full, threads=args.threads), start=1):
        if not result.ok:
            bad += 1
            print(f"BAD  {result.path}: {result.reason}", flush=True)
        elif result.turn != "none":
            print(
                f"TURNED  {result.path}: display matrix, decoded with {result.turn} (data.autorotate)",
                flush=True,
            )
        bar.update(checked, {"bad": bad})
    print(f"{checked - bad} of {checked} videos ok, {bad} bad")
    print(f"slow data loading? `rho data profile {args.manifest}` measures the decode cost", file=sys.stderr)
    return 1 if bad else 0


def _add_check_parser(data: argparse._SubParsersAction) -> None:
    check = data.add_parser(
        "check",
        help="list unreadable, truncated or missing videos",
        description="Open and decode every video of MANIFEST; print each bad one; exit 1 if any is bad.",
    )
    check.add_argument("manifest")
    check.add_argument(
        "--full", action="store_true", help="decode every frame, not just the first and last second"
    )
    check.add_argument("--threads", type=int, default=4, help="decoding threads (default 4)")
    check.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept rows outside the manifest's folder (../, absolute paths, symlinks out), as "
        "data.allow_outside_root: true does for training; without it they are refused as training refuses them",
    )
    check.set_defaults(func=_data_check)


def _data_transcode(args: argparse.Namespace) -> int:
    from harness.data.transcode import TranscodeSettings, default_workers, transcode_manifest
    from harness.progress import ProgressBar

    settings = TranscodeSettings(
        short_side=None if args.short_side == 0 else args.short_side,
        gop=args.gop,
        fps=args.fps,
        codec=args.codec,
        crf=args.crf,
        preset=args.preset,
    )
    bar: ProgressBar | None = None

    def progress(done: int, total: int, bad: int) -> None:
        nonlocal bar
        if bar is None:
            bar = ProgressBar("transcode", total, log_every=100)
            bar.started = started  # the clock of the whole command, not of the first video
        bar.update(done, {"bad": bad})

    started = time.monotonic()
    summary = transcode_manifest(
        args.manifest,
        args.out,
        settings,
        workers=default_workers() if args.workers is None else args.workers,
        progress=progress,
    )  # a bad option, folder or manifest raises a RhoError (status 2) before any work
    print(
        f"{summary.converted} converted, {summary.kept} already done, {len(summary.bad)} bad "
        f"({time.monotonic() - started:.1f} s)"
    )
    for path, reason in summary.bad:
        print(f"BAD  {path}: {reason}")
    if summary.bad_list is not None:
        print(f"bad inputs listed in {summary.bad_list}")
    if summary.manifest != Path():
        print(f"manifest: {summary.manifest}")
    else:
        print("no video could be converted: no manifest written")
    return 1 if summary.bad else 0


def _add_transcode_parser(data: argparse._SubParsersAction) -> None:
    from harness.data.transcode_settings import TranscodeSettings

    defaults = TranscodeSettings()
    transcode = data.add_parser(
        "transcode",
        help="re-encode a dataset once for fast training reads (short side, GOP, no B-frames, upright)",
        description="Re-encode every video of MANIFEST into OUT (the same relative paths, .mp4) with PyAV: "
        "short side at most --short-side, a keyframe every --gop frames, no B-frames, constant frame rate, "
        "the display matrix applied to the pixels, audio dropped; then write OUT/<manifest name> with the "
        "same labels and columns. Resumable: finished videos are kept on a rerun (partial ones never appear). "
        "Exit status 0 when every video converted, 1 when some were bad (skipped, listed in "
        "OUT/<manifest stem>.bad.txt; the manifest lists the rest), 2 for bad options.",
    )
    transcode.add_argument("manifest")
    transcode.add_argument("out", help="folder of the new dataset (not the manifest's folder)")
    transcode.add_argument(
        "--short-side",
        type=int,
        default=defaults.short_side,
        help=f"scale the short side down to this, never up; 0 keeps the size (default {defaults.short_side})",
    )
    transcode.add_argument(
        "--gop",
        type=int,
        default=defaults.gop,
        help=f"keyframe interval in frames; 1: all-intra, the fastest seeks and the most disk (default {defaults.gop})",
    )
    transcode.add_argument("--fps", type=float, help="frame rate of the copies (default: each video's own)")
    transcode.add_argument("--codec", default=defaults.codec, help=f"PyAV encoder (default {defaults.codec})")
    transcode.add_argument(
        "--crf",
        type=int,
        default=defaults.crf,
        help=f"quality, lower is better (default {defaults.crf}: x264's; fewer bits decode faster; 18: visually lossless)",
    )
    transcode.add_argument(
        "--preset", default=defaults.preset, help=f"x264/x265 speed preset (default {defaults.preset})"
    )
    transcode.add_argument(
        "--workers",
        type=int,
        help="processes (default: min(CPUs, 8))",
    )
    transcode.set_defaults(func=_data_transcode)


def _data_profile(args: argparse.Namespace) -> int:
    import json

    from harness.config import load_experiment
    from harness.data.manifest import read_manifest
    from harness.data.profile import format_profile, profile_manifest

    if args.sample < 1:
        raise UserError(f"--sample {args.sample}: profile at least 1 video")
    data = load_experiment(args.config, args.overrides, check_files=False).data
    entries = read_manifest(args.manifest, check_files=False)
    profile = profile_manifest(
        entries, data, sample=args.sample, seed=args.seed, candidates=not args.no_transcode
    )
    print(json.dumps(profile.as_dict(), indent=2) if args.json else format_profile(profile))
    return 0


def _add_profile_parser(data: argparse._SubParsersAction) -> None:
    profile = data.add_parser(
        "profile",
        help="measure a dataset's encoding and decode cost per training item; recommend a transcode",
        description="Over a seeded sample of MANIFEST's videos, report codec, size, frame rate, GOP and "
        "B-frames (measured from the packets), duration, bytes/s and the time to decode one training item "
        "at the config's data.clips, data.frames and data.stride; then transcode two of them at a few "
        "settings in a temp folder, time the same items and recommend `rho data transcode` options when "
        "one is at least 1.3x faster (else: the data is fine as is).",
    )
    profile.add_argument("manifest")
    profile.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (data.clips=4)")
    profile.add_argument(
        "--config", help="experiment YAML whose data section to time (default: the defaults)"
    )
    profile.add_argument(
        "--sample", type=int, default=16, help="videos to profile, spread over the manifest (default 16)"
    )
    profile.add_argument("--seed", type=int, default=0, help="which videos and clips are sampled (default 0)")
    profile.add_argument(
        "--no-transcode", action="store_true", help="skip the transcode trials and the recommendation"
    )
    profile.add_argument("--json", action="store_true", help="machine-readable output")
    profile.set_defaults(func=_data_profile)


def _data_inspect(args: argparse.Namespace) -> int:
    import torch

    from harness.config import load_experiment
    from harness.train import train_dataset

    experiment = load_experiment(args.config, args.overrides)
    data = experiment.data
    dataset = train_dataset(experiment)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=min(args.batch, len(dataset)), shuffle=True, num_workers=data.workers
    )
    started = time.monotonic()
    batch = dataset.note_skips(next(iter(loader)))  # the batch's bad videos, warned once each
    elapsed = time.monotonic() - started
    clips = batch["clips"]
    span = (data.frames - 1) * data.stride + 1
    print(f"manifest      {data.train} ({len(dataset)} videos)")
    print(
        f"clips         {tuple(clips.shape)}  [B, V, C, T, H, W]  rho={data.clips} T={data.frames} stride={data.stride}"
    )
    print(f"clip span     {span} frames; t_max={data.t_max if data.t_max is not None else 'global'}")
    print(f"values        mean {clips.mean():+.3f} std {clips.std():.3f} (normalised)")
    print(f"labels        {batch['label'].tolist()}")
    starts = batch["starts"]
    gaps = (starts.max(1).values - starts.min(1).values).tolist()
    print(
        f"start gaps    {', '.join(f'{g:.2f}' for g in gaps)} s (max distance between a video's clip starts)"
    )
    print(
        f"padded/skip   {int(batch['padded'].sum())} frames padded, {len(dataset.bad_files)} unreadable videos skipped"
    )
    print(f"decode time   {elapsed:.2f} s for one batch with {data.workers} workers")
    return 0


def _add_inspect_parser(data: argparse._SubParsersAction) -> None:
    inspect = data.add_parser(
        "inspect",
        help="decode one training batch of a config and summarise it",
        description="Build the training dataset of CONFIG, decode one batch and print its shapes and statistics.",
    )
    inspect.add_argument("config")
    inspect.add_argument("overrides", nargs="*", metavar="key=value")
    inspect.add_argument("--batch", type=int, default=8, help="videos in the batch (default 8)")
    inspect.set_defaults(func=_data_inspect)


def _data_import(args: argparse.Namespace) -> int:
    from harness.data import importers

    fmt = args.format
    if fmt == "folders":
        written = importers.from_folders(
            args.root, args.out, extensions=args.extensions, val_fraction=args.val_fraction, seed=args.seed
        )
    elif fmt == "ucf101":
        written = importers.from_ucf101(args.videos, args.splits, args.out, split=args.split)
    elif fmt == "hmdb51":
        written = importers.from_hmdb51(args.videos, args.splits, args.out, split=args.split)
    elif fmt == "kinetics":
        written = importers.from_kinetics(args.csv, args.videos, args.out)
    else:
        written = importers.from_ssv2(args.labels, args.split_json, args.videos, args.out)
    for path in written if isinstance(written, (list, tuple)) else [written]:
        print(f"wrote {path}")
    return 0


def _extension_list(text: str) -> tuple[str, ...]:
    """``--extensions mp4,.M4V`` -> ``(".mp4", ".m4v")``."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one extension, e.g. --extensions .mp4,.m4v")
    return tuple(name if name.startswith(".") else f".{name}" for name in names)


def _add_import_parser(data: argparse._SubParsersAction) -> None:
    from harness.data.formats import VIDEO_EXTENSIONS

    imports = data.add_parser("import", help="turn a public dataset layout into manifests").add_subparsers(
        dest="format", metavar="FORMAT", required=True
    )
    folders = imports.add_parser("folders", help="class-per-folder tree: ROOT/<class>/<video>")
    folders.add_argument("root")
    folders.add_argument("out", help="folder for train.csv (and val.csv), classes.txt")
    folders.add_argument("--val-fraction", type=float, default=0.0, help="stratified validation share")
    folders.add_argument("--seed", type=int, default=0)
    folders.add_argument(
        "--extensions",
        type=_extension_list,
        default=VIDEO_EXTENSIONS,
        metavar=".EXT,...",
        help="comma-separated file extensions of the videos, replacing the default list "
        f"({' '.join(VIDEO_EXTENSIONS)})",
    )
    for name, label in (("ucf101", "UCF101"), ("hmdb51", "HMDB51")):
        sub = imports.add_parser(name, help=f"{label} videos and official split files")
        sub.add_argument("videos", help="folder of videos, <class>/<video>")
        sub.add_argument("splits", help="folder of the split files")
        sub.add_argument("out", help="folder for train.csv, val.csv, classes.txt")
        sub.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    kinetics = imports.add_parser(
        "kinetics", help="a Kinetics CSV (label,youtube_id,time_start,time_end,split)"
    )
    kinetics.add_argument("csv")
    kinetics.add_argument("videos", help="folder of videos, flat or <label>/<file>")
    kinetics.add_argument("out", help="manifest CSV to write")
    ssv2 = imports.add_parser("ssv2", help="Something-Something v2 JSON label files")
    ssv2.add_argument("labels", help="labels.json")
    ssv2.add_argument("split_json", help="train.json or validation.json")
    ssv2.add_argument("videos", help="folder of <id>.webm")
    ssv2.add_argument("out", help="manifest CSV to write")
    for sub in imports.choices.values():
        sub.set_defaults(func=_data_import)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho data`` and its actions."""
    data = commands.add_parser(
        "data", help="make, import, check, inspect, profile and transcode video datasets"
    ).add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_synth_parser(data)
    _add_check_parser(data)
    _add_inspect_parser(data)
    _add_transcode_parser(data)
    _add_profile_parser(data)
    _add_import_parser(data)
