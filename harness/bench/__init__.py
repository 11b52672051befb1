"""Speed and memory benchmarks (``rho bench``): each runs the reference and ours in the same run.

The benchmarks themselves are ``benchmarks/speed/*.py``; this package finds and runs them
(``runner``), holds what they return (``result``), the inputs and meters they share
(``media``) and the description of the machine (``environment``).
"""

from harness.bench.result import BenchResult, Check
from harness.bench.runner import BenchContext, BenchError, discover, run_benchmarks

__all__ = ["BenchContext", "BenchError", "BenchResult", "Check", "discover", "run_benchmarks"]
