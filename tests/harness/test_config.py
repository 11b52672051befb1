"""Experiment config: loading, overrides, and one clear error per bad key or value."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import ConfigError, Experiment, load_experiment, parse_overrides

DEMO = Path(__file__).resolve().parents[2] / "studies" / "experiments" / "demo.yaml"


def load(*overrides, check_files=False):
    return load_experiment(DEMO, list(overrides), check_files=check_files)


def test_demo_config_loads_and_overrides_apply():
    experiment = load("data.clips=3", "method.temperature=0.3", "data.t_max=null", "optim.lr=1e-3")
    assert isinstance(experiment, Experiment)
    assert experiment.data.clips == 3 and experiment.data.t_max is None
    assert experiment.method.name == "simclr" and experiment.method.params["temperature"] == 0.3
    assert experiment.optim.lr == 1e-3
    flat = experiment.flat()
    assert flat["data.clips"] == 3 and flat["method.temperature"] == 0.3 and flat["method.name"] == "simclr"


def test_ints_are_accepted_for_floats_and_lists_are_typed():
    experiment = load("data.t_max=2", "data.augment.crop_scale=[0.3,0.9]")
    assert experiment.data.t_max == 2.0 and isinstance(experiment.data.t_max, float)
    assert experiment.data.augment.crop_scale == [0.3, 0.9]


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("data.clips=0", "data.clips", ">= 1"),
        ("data.frames=0", "data.frames", ">= 1"),
        ("data.stride=-2", "data.stride", ">= 1"),
        ("data.t_max=-1", "data.t_max", ">= 0"),
        ("data.crop=0", "data.crop", "> 0"),
        ("data.clips=two", "data.clips", "an integer"),
        ("data.clips=2.5", "data.clips", "an integer"),
        ("data.fps=0", "data.fps", "> 0"),
        ("data.dataset=ucf10", "data.dataset", "did you mean 'ucf101'"),
        ("method.name=simclrr", "method.name", "one of"),
        ("backbone.name=resnet9000", "backbone.name", "one of"),
        ("optim.name=adam", "optim.name", "one of sgd, lars, adamw"),
        ("data.augment.crop_scale=[0.9,0.2]", "data.augment.crop_scale", "low <= high"),
        ("data.augment.flip=1.5", "data.augment.flip", "<= 1.0"),
        ("optim.nesterov=yes please", "optim.nesterov", "true or false"),
        ("data.clip=3", "data.clip", "did you mean data.clips?"),
        ("data.augment.colr_p=0.5", "data.augment.colr_p", "did you mean data.augment.color_p?"),
        ("method.temperatur=0.2", "method.temperatur", "did you mean method.temperature?"),
        ("method.temperature=cold", "method.temperature", "a float"),
        ("optim.warmup_epochs=50", "optim.warmup_epochs", "fewer than optim.epochs"),
        ("optim.schedule=step", "optim.schedule", "one of cosine_after_warmup, cosine_with_warmup"),
        ("optim.warmup_start_lr=5", "optim.warmup_start_lr", "less than optim.lr"),
        ("dat.clips=2", "dat", "did you mean data?"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(override, key, allowed):
    with pytest.raises(ConfigError) as info:
        load(override)
    message = str(info.value)
    assert info.value.key == key
    assert allowed in message
    assert message.startswith(f"command line: {override}"), "the message names the override as typed"
    assert str(DEMO) not in message, "not the config file: the value was not written there"


def test_choices_are_listed():
    with pytest.raises(ConfigError, match="byol.*moco.*simclr.*swav|simclr.*swav"):
        load("method.name=nope")


def test_files_must_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train=.* is not allowed: an existing file"):
        load(f"data.train={tmp_path}/none.csv", check_files=True)
    with pytest.raises(ConfigError, match=r"eval.benchmarks=.* is not allowed: existing files"):
        load(f"eval.benchmarks=[{tmp_path}/b.yaml]", f"data.train={DEMO}", "data.val=null", check_files=True)


def test_yaml_is_read_with_the_safe_loader(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_experiment(evil, check_files=False)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["data.clips"])
    with pytest.raises(ConfigError, match="a section"):
        load("data.clips.x=1")


def test_training_hash_ignores_logging_but_not_training_keys():
    base = load().training_hash()
    assert load("runtime.log_every=3", "data.workers=0", "eval.knn_monitor=true").training_hash() == base
    assert load("data.clips=3").training_hash() != base
    assert load("runtime.seed=1").training_hash() != base


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True)


def test_cli_config_show_prints_the_resolved_config():
    out = run_cli("config", "show", str(DEMO), "data.clips=4", "--no-check-files")
    assert out.returncode == 0, out.stderr
    assert "clips: 4" in out.stdout and "temperature: 0.2" in out.stdout and "crop_scale:" in out.stdout


def test_cli_exits_2_with_one_line_and_no_traceback():
    out = run_cli("config", "show", str(DEMO), "data.clips=0", "--no-check-files")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "command line: data.clips=0 is not allowed" in out.stderr and ">= 1" in out.stderr


def test_output_dir_expands_environment_variables(monkeypatch):
    monkeypatch.setenv("RHO_TEST_SCRATCH", "/scratch/me")
    assert load("runtime.output_dir=${RHO_TEST_SCRATCH}/ckpt").runtime.output_dir == "/scratch/me/ckpt"
    monkeypatch.delenv("RHO_TEST_SCRATCH")
    assert load("runtime.output_dir=${RHO_TEST_SCRATCH:-runs}/ckpt").runtime.output_dir == "runs/ckpt"
    with pytest.raises(ConfigError, match=r"runtime.output_dir=.*export RHO_TEST_SCRATCH="):
        load("runtime.output_dir=${RHO_TEST_SCRATCH}/ckpt")


def test_backbone_params_are_checked_against_the_builder_at_load():
    with pytest.raises(ConfigError) as info:
        load("backbone.widht=3")
    assert info.value.key == "backbone.widht"
    assert str(info.value).endswith(
        "backbone.widht=3 is not allowed: unknown key; did you mean backbone.width? r3d_tiny takes: width"
    )
    with pytest.raises(ConfigError, match="backbone.width=wide is not allowed: .* like the default 32"):
        load("backbone.width=wide")


def test_a_forwarded_backbone_param_is_accepted_and_reaches_the_model():
    from harness import backbones

    experiment = load("backbone={name: x3d_xs, width_factor: 1.0}")
    assert experiment.backbone.params == {"width_factor": 1.0}
    narrow, dim = backbones.build(experiment.backbone.name, **experiment.backbone.params)
    default, _ = backbones.build("x3d_xs")
    assert dim == 2048
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in default.parameters())
    with pytest.raises(
        ConfigError,
        match=r"backbone.width_factr = .*did you mean backbone.width_factor\? \(`rho config keys backbone.x3d_xs`",
    ):
        load("backbone={name: x3d_xs, width_factr: 1.0}")


def test_a_preset_of_a_builder_is_not_a_parameter():
    """slow_r50 is the depth-50 ResNet: its builder sets model_depth, so the key is refused at load."""
    with pytest.raises(
        ConfigError,
        match=r"backbone.model_depth = 101 is not allowed: unknown key; .*rho config keys backbone.slow_r50",
    ):
        load("backbone={name: slow_r50, model_depth: 101}")


def test_a_method_without_parameters_says_so():
    with pytest.raises(ConfigError) as info:
        load("method.name=random")  # the demo config sets method.temperature
    assert str(info.value).endswith(
        "method.temperature = 0.2 is not allowed: random takes no parameters; drop method.temperature"
    )
