"""asl_jax: Asymmetrical-Similarity Learning for image copy detection in JAX."""

__version__ = "0.1.0"
