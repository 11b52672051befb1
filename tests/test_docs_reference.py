"""The reference pages (docs/reference/) are what docs/gen_reference.py writes from the code."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "gen_reference.py"


def generator():
    spec = importlib.util.spec_from_file_location("gen_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_pages_match_the_code():
    gen = generator()
    stale = gen.stale()
    assert not stale, (
        f"{', '.join(str(p.relative_to(ROOT)) for p in stale)} differ from the code: "
        "run python docs/gen_reference.py"
    )


def test_a_changed_help_text_makes_the_config_page_stale(tmp_path, monkeypatch):
    from harness import config

    gen = generator()
    for name, text in gen.pages().items():
        (tmp_path / name).write_text(text)
    assert gen.stale(tmp_path) == []
    field = next(f for f in config.dataclasses.fields(config.DataConfig) if f.name == "clips")
    monkeypatch.setattr(field, "metadata", {**field.metadata, "help": "a new help text"})
    assert gen.stale(tmp_path) == [tmp_path / "config.md"]


def test_every_config_key_is_on_the_config_page():
    from harness.config import config_keys

    page = (ROOT / "docs" / "reference" / "config.md").read_text()
    missing = [row.key for row in config_keys() if row.group == "" and f"`{row.key}`" not in page]
    assert not missing


def test_check_exits_1_naming_the_stale_page_and_the_fix(tmp_path, monkeypatch, capsys):
    gen = generator()
    for name, text in gen.pages().items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(gen, "OUT", tmp_path)
    monkeypatch.setattr(gen, "ROOT", tmp_path.parent)
    assert gen.main(["--check"]) == 0
    (tmp_path / "cli.md").write_text("edited by hand\n")
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert (
        f"{tmp_path.name}/cli.md" in err and "config.md" not in err and "python docs/gen_reference.py" in err
    )


def test_the_pages_are_the_same_from_every_checkout():
    """Nothing of this clone's location (a default under the checkout, such as `rho bench --output`)
    ends up in a page: a fresh clone elsewhere must generate the same text."""
    for name, text in generator().pages().items():
        assert str(ROOT) not in text, f"{name} holds this checkout's path {ROOT}"
