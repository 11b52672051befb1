"""rho-harness: large-scale studies of self-supervised spatiotemporal representation learning."""

__version__ = "0.1.0"
