"""workbench: simulation-first decentralized and federated learning on JAX."""

__version__ = "0.1.0"
