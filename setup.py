"""Build hook: the wheel carries the shipped study specs and benchmarks (``harness.resources``).

``studies/`` and ``benchmarks/`` stay where the design puts them, at the top of the repository;
building the wheel copies their specs, the SLURM script and the speed benchmarks' modules
(``harness.resources.shipped_files``) into ``harness/_shipped/``, so that an installed ``rho``
finds them from any folder. Everything else is declared in pyproject.toml.
"""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _resources():
    """harness/resources.py alone (stdlib only): the build environment has none of our dependencies."""
    spec = importlib.util.spec_from_file_location("_rho_resources", ROOT / "harness" / "resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithShipped(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's own folders
        for relative in _resources().shipped_files(ROOT):
            target = Path(self.build_lib) / "harness" / "_shipped" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, target)


setup(cmdclass={"build_py": BuildWithShipped})
