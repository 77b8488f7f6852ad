"""Tokenizers: actions (FAST, binning), text (sentencepiece) and the π0-FAST prompt."""

from vla_jax.tokenizers.action_base import ActionTokenizer, load_action_tokenizer
from vla_jax.tokenizers.binning import BinningTokenizer
from vla_jax.tokenizers.fast import FASTTokenizer
from vla_jax.tokenizers.prompt import PromptTokenizer
from vla_jax.tokenizers.text import SentencePieceTokenizer, train_text_model

__all__ = [
    "ActionTokenizer",
    "BinningTokenizer",
    "FASTTokenizer",
    "PromptTokenizer",
    "SentencePieceTokenizer",
    "load_action_tokenizer",
    "train_text_model",
]
