"""Tokenizers: text prompts (and, later, actions) to integer ids."""

from vla_jax.tokenizers.text import ByteTokenizer

__all__ = ["ByteTokenizer"]
