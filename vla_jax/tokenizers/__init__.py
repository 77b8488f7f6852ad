"""Tokenizers: text prompts (and, later, actions) to integer ids."""

from vla_jax.tokenizers.text import WordHashTokenizer

__all__ = ["WordHashTokenizer"]
