"""Speed and memory benchmarks (``rho bench``): each runs the reference and ours in the same run.

The benchmarks themselves are ``benchmarks/speed/*.py``; this package finds and runs them
(``runner``), holds what they return (``result``), the inputs and meters they share
(``media``) and the description of the machine (``environment``).
"""

from harness.speed.result import Check, SpeedResult
from harness.speed.runner import SpeedContext, SpeedError, discover, run_benchmarks

__all__ = ["Check", "SpeedContext", "SpeedError", "SpeedResult", "discover", "run_benchmarks"]
