"""The docs site (mkdocs.yml, docs/): it builds with --strict (mkdocs.yml's validation settings make
broken internal links and anchors, absolute links and pages left out of the nav warnings, which
--strict turns into errors); every page is in the nav; benchmarks/RESULTS.md is included at build
time; the screenshots are referenced and small. A build takes a few seconds."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
MAX_IMAGE_BYTES = 300_000

pytest.importorskip("mkdocs")
pytest.importorskip("material")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "WARNING" not in build.stderr, build.stderr
    return out


def nav_files(nav) -> list[str]:
    """The page files a mkdocs nav names, depth first."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_files(value)]
    return [page for item in nav for page in nav_files(item)]


def test_the_site_builds_strictly_with_every_page(site):
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    for page in pages:
        built = site / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert built.is_file(), f"{page} was not built"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    from mkdocs.config import load_config

    config = load_config(str(REPO / "mkdocs.yml"))
    assert config["strict"] and config["docs_dir"] == str(DOCS)
    named = nav_files(config["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert sorted(set(named) - pages) == [], "nav entries without a page"
    assert sorted(pages - set(named)) == [], "pages left out of mkdocs.yml's nav"
    assert len(named) == len(set(named)), "a page is in the nav twice"


@pytest.mark.slow  # four builds
def test_broken_links_and_anchors_fail_the_build(tmp_path):
    """The validation settings are what make the build fail: check them on a copy with one bad link."""
    copy = tmp_path / "copy"
    (copy / "docs").mkdir(parents=True)
    (copy / "mkdocs.yml").write_text(
        re.sub(r"(?ms)^nav:.*\Z", "nav:\n  - index.md\n  - other.md\n", (REPO / "mkdocs.yml").read_text())
    )
    (copy / "docs" / "other.md").write_text("# Other\n\n## A heading\n")
    (copy / "benchmarks").mkdir()
    (copy / "benchmarks" / "RESULTS.md").write_text("# Results\n")  # mkdocs.yml watches it
    for link, message in [
        ("other.md#a-heading", None),
        ("other.md#no-such-heading", "does not contain an anchor"),
        ("missing.md", "not found among documentation files"),
        ("/other/", "absolute link"),
    ]:
        (copy / "docs" / "index.md").write_text(f"# Home\n\n[a link]({link})\n")
        build = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
            cwd=copy,
            capture_output=True,
            text=True,
            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
            timeout=300,
        )
        if message is None:
            assert build.returncode == 0, build.stderr
        else:
            assert build.returncode != 0 and message in build.stderr, (link, build.stderr)


def test_the_benchmark_results_are_included_from_benchmarks(site):
    results = (REPO / "benchmarks" / "RESULTS.md").read_text()
    headings = re.findall(r"(?m)^## (\w+):", results)
    assert headings, "benchmarks/RESULTS.md has its per-benchmark sections"
    page = (site / "benchmark-results" / "index.html").read_text()
    for name in headings:
        assert f">{name}:" in page, f"section {name} of RESULTS.md is not on the page"
    assert "--8<--" not in page


def test_screenshots_are_small_and_each_is_shown():
    images = sorted((DOCS / "images").glob("*.png"))
    assert images, "docs/screenshots.py writes docs/images/*.png"
    text = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    for image in images:
        assert image.stat().st_size <= MAX_IMAGE_BYTES, f"{image.name}: {image.stat().st_size} bytes"
        assert f"images/{image.name}" in text, f"{image.name} is on no page"
