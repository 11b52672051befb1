"""Method and backbone parameters read from source (``harness.signatures``): the same answer as the
imported registries, help for each, and the light commands that rely on it (no torch)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import methods
from harness import backbones, signatures
from harness.config import config_keys, describe, load_experiment

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "studies" / "experiments" / "demo.yaml"
REGISTRIES = {"method": methods, "backbone": backbones}


@pytest.mark.parametrize(
    "kind, name",
    [(kind, name) for kind, registry in REGISTRIES.items() for name in signatures.builtin_names(kind)],
)
def test_source_params_are_what_the_imported_registry_says(kind, name):
    """Validation from source is exactly as strict: same names, same literal defaults; a default
    that is not a literal is an Unevaluated, resolved by importing when a key sets it."""
    read = signatures.source_params(kind, name)
    assert read is not None, f"{kind} {name}: the source reader no longer follows it"
    real = REGISTRIES[kind].params_of(name)
    assert list(read) == list(real)
    for key, param in read.items():
        if isinstance(param.default, signatures.Unevaluated):
            assert not isinstance(real[key], (str, int, float, bool, type(None))), (key, real[key])
        else:
            assert param.default == real[key], (key, param.default, real[key])


def test_every_builtin_name_is_listed_from_source():
    assert signatures.builtin_names("method") == list(methods._BUILTIN)
    assert signatures.builtin_names("backbone") == list(backbones._BUILTIN)


def test_every_method_and_backbone_parameter_has_help():
    """Ours from the docstrings' Args sections; a forwarded one from its constructor's, else where it goes."""
    missing = []
    for kind in REGISTRIES:
        for name in signatures.builtin_names(kind):
            for param in signatures.source_params(kind, name).values():
                ours = param.owner.startswith(("methods", "harness"))
                if not param.help and ours:
                    missing.append(f"{kind}.{name}: {param.name} ({param.owner})")
    assert not missing, "add them to the docstring's Args: section: " + "; ".join(missing)
    assert all(row.help for row in config_keys())


def test_an_unevaluated_default_is_checked_by_importing_it():
    with pytest.raises(
        Exception, match=r"backbone.norm = 3 is not allowed: a type like the default <class 'torch.nn"
    ):
        load_experiment(DEMO, ["backbone={name: slow_r50, norm: 3}"], check_files=False)


def test_docstring_args_reads_google_style_sections():
    doc = """Summary.

    Args:
        a, b: the pair.
        c (int): a count
            over two lines.

    Returns:
        x: not a parameter.
    """
    assert signatures.docstring_args(doc) == {
        "a": "the pair.",
        "b": "the pair.",
        "c": "a count over two lines.",
    }


def test_config_keys_lists_method_and_backbone_parameters_as_users_write_them():
    moco = describe("method.moco")
    assert "method.temperature" in moco and "method.queue_size" in moco and "data.clips" not in moco
    assert "backbone.width" in describe("backbone.r3d_tiny")
    assert "data.augment.flip" in describe("data.augment") and "data.clips" not in describe("data.augment")


def run_rho(*args, cwd, check_torch=False):
    """``rho ARGS`` in a fresh process; with ``check_torch``, the heavy modules imported are printed last."""
    code = (
        "import sys\nfrom harness.cli import main\ncode = main(sys.argv[1:])\n"
        "sys.stdout.flush()\n"
        "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'pytorchvideo'}))\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RHO_DATA", None)
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_config_show_works_in_a_fresh_folder_without_data_and_without_torch(tmp_path):
    """The --help example on a fresh clone: the config, then a warning that says how to make the data."""
    out = run_rho("config", "show", str(DEMO), "data.clips=3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "clips: 3" in out.stdout and "temperature: 0.2" in out.stdout
    assert "HEAVY []" in out.stdout, "checking the method's and backbone's parameters imported torch"
    assert (
        "rho: warning: " in out.stderr and "rho data synth" in out.stderr and "--no-check-files" in out.stderr
    )
    strict = run_rho("config", "show", "--check-files", str(DEMO), cwd=tmp_path)
    assert strict.returncode == 2 and "--no-check-files skips the check" in strict.stderr


def test_an_unknown_key_on_the_command_line_is_named_as_typed_in_at_most_three_lines(tmp_path):
    out = run_rho("config", "show", str(DEMO), "data.clip=3", "--no-check-files", cwd=tmp_path)
    assert out.returncode == 2
    error = out.stderr.strip()
    assert error.startswith("rho: error: command line: data.clip=3 is not allowed: unknown key")
    assert "did you mean data.clips?" in error and "`rho config keys data`" in error
    assert str(DEMO) not in error and len(error.splitlines()) <= 3 and len(error) < 200, error
    method = run_rho("config", "show", str(DEMO), "method.name=moco", "method.tempreature=1", cwd=tmp_path)
    assert (
        "did you mean method.temperature?" in method.stderr and "rho config keys method.moco" in method.stderr
    )


def test_an_error_in_the_file_still_names_the_file(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("data:\n  clip: 3\n")
    out = run_rho("config", "show", str(config), "data.clips=3", "--no-check-files", cwd=tmp_path)
    assert out.returncode == 2 and f"{config}: data.clip = 3 is not allowed" in out.stderr


def test_report_help_prints_a_single_percent_sign():
    from harness.cli import build_parser

    parser = build_parser()
    text = parser._subparsers._group_actions[0].choices["report"].format_help()
    assert "95% interval" in text and "%%" not in text


def test_no_help_of_any_command_prints_a_doubled_percent_sign():
    from harness.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for sub in action.choices.values():
                    yield from parsers(sub)

    doubled = [p.prog for p in parsers(build_parser()) if "%%" in p.format_help()]
    assert not doubled


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_name_the_commands(shell, capsys, tmp_path):
    from harness.cli import main

    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for command in ("pretrain", "study", "config", "completion", "--no-check-files"):
        assert command in script, command
    if shell == "bash":
        path = tmp_path / "rho.bash"
        path.write_text(script)
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
