"""vla_jax: pretraining vision-language-action robot policies in JAX."""

__version__ = "0.1.0"
