"""``rho import-checkpoint``: a checkpoint written here in SlowFast's format (the key layout of
``ContrastiveModel`` around ``video_model_builder.ResNet`` for Slow 8×8 R-50, built below from
SlowFast's definition, not from our code) is imported into our ``slow_r50``; the imported encoder
computes what a functional Slow R-50 written from SlowFast's stem_helper / resnet_helper computes
on the file's own tensors, and bad files get errors naming the keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from harness import backbones
from harness.checkpoint import CheckpointError
from harness.cli import main
from harness.slowfast_import import SlowFastCheckpoint, encoder_state, read_slowfast
from harness.train import load_trained

# Slow 8x8 R-50 in SlowFast (video_model_builder.py: _MODEL_STAGE_DEPTH[50], _TEMPORAL_KERNEL_BASIS
# "slow", RESNET.SPATIAL_STRIDES [[1], [2], [2], [2]], WIDTH_PER_GROUP 64, NUM_GROUPS 1):
# (stage, blocks, conv a's temporal kernel, spatial stride, dim_in, dim_inner, dim_out)
STAGES = [
    (2, 3, 1, 1, 64, 64, 256),
    (3, 4, 1, 2, 256, 128, 512),
    (4, 6, 3, 2, 512, 256, 1024),
    (5, 3, 3, 2, 1024, 512, 2048),
]
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def slowfast_resnet_shapes() -> dict[str, tuple[int, ...]]:
    """The state-dict names and shapes of SlowFast's ResNet (ARCH slow, DEPTH 50), head left out."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(name: str, channels: int) -> None:
        shapes.update({f"{name}.{t}": (() if t == "num_batches_tracked" else (channels,)) for t in BN})

    shapes["s1.pathway0_stem.conv.weight"] = (64, 3, 1, 7, 7)  # stem kernel [1, 7, 7]
    bn("s1.pathway0_stem.bn", 64)
    for stage, blocks, temporal, stride, dim_in, inner, dim_out in STAGES:
        for i in range(blocks):
            block = f"s{stage}.pathway0_res{i}"
            block_in = dim_in if i == 0 else dim_out
            if block_in != dim_out or (stride if i == 0 else 1) != 1:  # ResBlock: projection shortcut
                shapes[f"{block}.branch1.weight"] = (dim_out, block_in, 1, 1, 1)
                bn(f"{block}.branch1_bn", dim_out)
            shapes[f"{block}.branch2.a.weight"] = (inner, block_in, temporal, 1, 1)
            bn(f"{block}.branch2.a_bn", inner)
            shapes[f"{block}.branch2.b.weight"] = (inner, inner, 1, 3, 3)
            bn(f"{block}.branch2.b_bn", inner)
            shapes[f"{block}.branch2.c.weight"] = (dim_out, inner, 1, 1, 1)
            bn(f"{block}.branch2.c_bn", dim_out)
    return shapes


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values: weights N(0, 0.05²), BN weights/biases/means N(·), variances in [0.5, 1.5],
    a distinct num_batches_tracked per layer."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for count, (name, shape) in enumerate(shapes.items()):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1000 + count)
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(shape, generator=generator)
        elif name.endswith(("bn.weight", "_bn.weight")):
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            state[name] = 0.05 * torch.randn(shape, generator=generator)
    return state


def contrastive_model_state(resnet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ContrastiveModel (TYPE moco, NUM_MLP_LAYERS 3, MLP_DIM 2048 → DIM 128, shrunk here to 32 → 8):
    backbone.*, its head's MLP, the momentum encoder backbone_hist.*, the queue buffers."""
    state = {f"backbone.{name}": tensor for name, tensor in resnet.items()}
    for index, (rows, cols) in zip((0, 2, 4), ((32, 2048), (32, 32), (8, 32)), strict=True):
        state[f"backbone.head.projection.projection.{index}.weight"] = torch.randn(rows, cols)
        state[f"backbone.head.projection.projection.{index}.bias"] = torch.randn(rows)
    state.update({f"backbone_hist.{name}": tensor for name, tensor in resnet.items()})  # shared storage
    state.update(
        {"ptr": torch.tensor([0]), "queue_x": torch.randn(16, 8), "iter": torch.zeros(1, dtype=torch.long)}
    )
    return state


CFG = {
    "MODEL": {"MODEL_NAME": "ContrastiveModel", "ARCH": "slow"},
    "CONTRASTIVE": {"TYPE": "moco"},
    "DATA": {"NUM_FRAMES": 8, "SAMPLING_RATE": 8, "TRAIN_CROP_NUM_TEMPORAL": 2},
    "SOLVER": {"WARMUP_EPOCHS": 35.0},
}


@pytest.fixture(scope="module")
def resnet() -> dict[str, torch.Tensor]:
    return random_tensors(slowfast_resnet_shapes())


@pytest.fixture(scope="module")
def pyth(resnet, tmp_path_factory) -> Path:
    """A .pyth as slowfast/utils/checkpoint.py save_checkpoint writes it, of a ρMoCo after 200 epochs."""
    path = tmp_path_factory.mktemp("slowfast") / "MoCo_SlowR50_8x8_T2_epoch_00200.pyth"
    state = contrastive_model_state(resnet)
    blob = {"epoch": 199, "model_state": state, "optimizer_state": {"state": {}, "param_groups": []}}
    torch.save({**blob, "cfg": yaml.safe_dump(CFG)}, path)
    return path


def slowfast_slow_r50(state: dict[str, torch.Tensor], clips: torch.Tensor) -> torch.Tensor:
    """Slow R-50 in eval mode written from SlowFast's modules on SlowFast's names: ResNetBasicStem
    (conv [1,7,7] stride [1,2,2] pad [0,3,3], BN, ReLU, max pool [1,3,3] / [1,2,2] / [0,1,1]),
    BottleneckTransform (a: [t,1,1] pad [t//2,0,0]; b: [1,3,3], the stride (STRIDE_1X1 False),
    pad [0,1,1]; c: [1,1,1]), ResBlock (branch1 + BN shortcut), identity pathway0_pool; then the
    global average the head's pooling does."""

    def bn(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(
            x, state[f"{name}.running_mean"], state[f"{name}.running_var"],
            state[f"{name}.weight"], state[f"{name}.bias"], training=False, eps=1e-5,
        )  # fmt: skip

    x = F.conv3d(clips, state["s1.pathway0_stem.conv.weight"], stride=(1, 2, 2), padding=(0, 3, 3))
    x = F.max_pool3d(F.relu(bn(x, "s1.pathway0_stem.bn")), (1, 3, 3), (1, 2, 2), (0, 1, 1))
    for stage, blocks, temporal, stride, *_ in STAGES:
        for i in range(blocks):
            block, step = f"s{stage}.pathway0_res{i}", stride if i == 0 else 1
            y = F.relu(
                bn(
                    F.conv3d(x, state[f"{block}.branch2.a.weight"], padding=(temporal // 2, 0, 0)),
                    f"{block}.branch2.a_bn",
                )
            )
            y = F.conv3d(y, state[f"{block}.branch2.b.weight"], stride=(1, step, step), padding=(0, 1, 1))
            y = bn(
                F.conv3d(F.relu(bn(y, f"{block}.branch2.b_bn")), state[f"{block}.branch2.c.weight"]),
                f"{block}.branch2.c_bn",
            )
            if f"{block}.branch1.weight" in state:
                x = bn(
                    F.conv3d(x, state[f"{block}.branch1.weight"], stride=(1, step, step)),
                    f"{block}.branch1_bn",
                )
            x = F.relu(x + y)
    return x.mean(dim=(2, 3, 4))


def test_the_imported_encoder_computes_slowfasts_slow_r50(pyth, resnet, tmp_path, capsys):
    out = tmp_path / "moco_r2.pt"
    assert main(["import-checkpoint", str(pyth), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(resnet)} tensors" in printed and "method moco (rho 2, 200 epochs)" in printed
    method, experiment, state = load_trained(out)  # what rho evaluate does
    assert (experiment.method.name, experiment.backbone.name) == ("moco", "slow_r50")
    assert (experiment.data.clips, experiment.data.frames, experiment.data.stride) == (2, 8, 8)
    assert (experiment.optim.epochs, state["epoch"], experiment.optim.warmup_epochs) == (200, 200, 35.0)
    assert state["imported_from"]["format"] == "slowfast"
    encoder = method.encoder.eval()
    clips = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(encoder(clips), slowfast_slow_r50(resnet, clips), rtol=1e-4, atol=1e-5)
    ours = encoder.state_dict()
    assert len(ours) == len(resnet), "one of ours per SlowFast tensor of the encoder"
    # the counters no forward uses, checked by hand at both ends and as a whole
    assert int(ours["body.blocks.0.norm.num_batches_tracked"]) == int(
        resnet["s1.pathway0_stem.bn.num_batches_tracked"]
    )
    ours_last = ours["body.blocks.4.res_blocks.2.branch2.norm_c.num_batches_tracked"]
    assert int(ours_last) == int(resnet["s5.pathway0_res2.branch2.c_bn.num_batches_tracked"])
    counters = sorted(int(v) for k, v in ours.items() if k.endswith("num_batches_tracked"))
    assert counters == sorted(int(v) for k, v in resnet.items() if k.endswith("num_batches_tracked"))


@pytest.fixture(scope="module")
def ours() -> dict[str, torch.Tensor]:
    return backbones.build("slow_r50")[0].state_dict()


def _checkpoint(state: dict[str, torch.Tensor]) -> SlowFastCheckpoint:
    return SlowFastCheckpoint(Path("zoo.pyth"), state, 199, CFG)


def test_a_plain_resnet_checkpoint_maps_too_and_its_classifier_is_dropped(resnet, ours):
    state = {
        **resnet,
        "head.projection.weight": torch.randn(400, 2048),
        "head.projection.bias": torch.zeros(400),
    }
    mapped, ignored = encoder_state(_checkpoint(state), ours)
    assert set(mapped) == set(ours) and sorted(ignored) == ["head.projection.bias", "head.projection.weight"]


def test_an_extra_key_is_named(resnet, ours):
    state = contrastive_model_state(resnet)
    state["backbone.s4.pathway0_nonlocal3.conv_theta.weight"] = torch.zeros(512, 1024, 1, 1, 1)
    with pytest.raises(
        CheckpointError, match=r"1 keys have no place in our slow_r50: backbone\.s4\.pathway0_nonlocal3"
    ):
        encoder_state(_checkpoint(state), ours)


def test_a_missing_key_is_named_with_ours(resnet, ours):
    state = contrastive_model_state(resnet)
    del state["backbone.s3.pathway0_res1.branch2.b_bn.running_var"]
    with pytest.raises(
        CheckpointError,
        match=r"1 keys of our slow_r50 are missing: backbone\.s3\.pathway0_res1\.branch2\.b_bn\.running_var "
        r"\(ours: body\.blocks\.2\.res_blocks\.1\.branch2\.norm_b\.running_var\)",
    ):
        encoder_state(_checkpoint(state), ours)


def test_a_shape_mismatch_is_named(resnet, ours):
    state = {**resnet, "s1.pathway0_stem.conv.weight": torch.zeros(64, 3, 5, 7, 7)}  # an I3D stem
    with pytest.raises(
        CheckpointError,
        match=r"s1\.pathway0_stem\.conv\.weight \(64, 3, 5, 7, 7\) vs ours .*\(64, 3, 1, 7, 7\)",
    ):
        encoder_state(_checkpoint(state), ours)


class _NotATensor:
    pass


def test_unsafe_or_foreign_files_are_refused_before_any_mapping(tmp_path, capsys):
    pickled = tmp_path / "code.pyth"
    with open(pickled, "wb") as handle:
        torch.save({"model_state": {}, "payload": _NotATensor()}, handle)
    with pytest.raises(CheckpointError, match="refuses files that need arbitrary code"):
        read_slowfast(pickled)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert main(["import-checkpoint", str(foreign), str(tmp_path / "out.pt")]) == 2
    assert "no model_state dict (found: state_dict)" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_without_a_method_in_file_or_flag_the_import_asks_for_one(resnet, tmp_path, capsys):
    path = tmp_path / "supervised.pyth"
    torch.save(
        {"epoch": 0, "model_state": resnet, "cfg": yaml.safe_dump({"MODEL": {"MODEL_NAME": "ResNet"}})}, path
    )
    assert main(["import-checkpoint", str(path), str(tmp_path / "a.pt")]) == 2
    assert "pass --method NAME" in capsys.readouterr().err
    assert main(["import-checkpoint", str(path), str(tmp_path / "a.pt"), "--method", "random"]) == 0
    assert load_trained(tmp_path / "a.pt")[1].method.name == "random"
