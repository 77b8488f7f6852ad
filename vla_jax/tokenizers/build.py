"""A run's tokenizers from its config: fitting, loading, and the files a run keeps."""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Callable

import ml_collections
import numpy as np

from vla_jax.errors import ConfigError
from vla_jax.tokenizers.action_base import ActionTokenizer, load_action_tokenizer
from vla_jax.tokenizers.binning import BinningTokenizer
from vla_jax.tokenizers.config import ACTION_KINDS
from vla_jax.tokenizers.fast import FASTTokenizer
from vla_jax.tokenizers.prompt import PromptTokenizer, clean_instruction
from vla_jax.tokenizers.text import SentencePieceTokenizer, train_text_model

ACTION_FILE = "action_tokenizer.json"
TEXT_FILE = "text.model"


def fit_action_tokenizer(tok: ml_collections.ConfigDict, chunks: np.ndarray, normalization: str) -> ActionTokenizer:
    """Fits ``tok.action`` on normalized chunks ``[N, T, D]``."""
    if tok.action not in ACTION_KINDS:
        raise ConfigError(f"config key 'tokenizer.action' is {tok.action!r}; expected one of {list(ACTION_KINDS)}")
    if tok.action == "binning":
        return BinningTokenizer.fit(chunks, normalization=normalization)
    try:
        return FASTTokenizer.fit(
            chunks, vocab_size=tok.action_vocab_size, scale=tok.fast_scale, normalization=normalization
        )
    except ValueError as error:
        raise ConfigError(f"config key 'tokenizer.action_vocab_size' is {tok.action_vocab_size}: {error}") from None


def load_action_file(path: str | pathlib.Path, *, horizon: int, action_dim: int, normalization: str) -> ActionTokenizer:
    """An action tokenizer file made for chunks ``[horizon, action_dim]`` of ``normalization``."""
    try:
        tokenizer = load_action_tokenizer(path, horizon=horizon, action_dim=action_dim)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if tokenizer.normalization != normalization:
        raise ConfigError(
            f"action tokenizer {path} was fit on {tokenizer.normalization!r}-normalized actions, "
            f"but data.normalization is {normalization!r}"
        )
    return tokenizer


def text_corpus(instructions, state_bins: int) -> list[str]:
    """Prompt-shaped sentences to train a small text model: every distinct instruction, numbers, markers."""
    distinct = sorted({(i.decode() if isinstance(i, bytes) else str(i)) for i in instructions})
    numbers = " ".join(str(b) for b in range(state_bins))
    return [f"Task: {clean_instruction(i)}, State: {numbers};\n" for i in distinct] + ["Action: |"]


def text_tokenizer(tok: ml_collections.ConfigDict, instructions: Callable[[], np.ndarray]) -> SentencePieceTokenizer:
    """``tok.text_model``, or a BPE model of ``tok.text_vocab_size`` trained on ``instructions()``."""
    if tok.text_model:
        try:
            return SentencePieceTokenizer.from_file(tok.text_model)
        except ValueError as error:
            raise ConfigError(f"config key 'tokenizer.text_model': {error}") from error
    bins = [str(b) for b in range(tok.state_bins)]  # a state value is one token, not digits
    try:
        return train_text_model(text_corpus(instructions(), tok.state_bins), tok.text_vocab_size, symbols=bins)
    except RuntimeError as error:  # sentencepiece: the vocabulary cannot hold the corpus's characters and symbols
        raise ConfigError(
            f"config key 'tokenizer.text_vocab_size' is {tok.text_vocab_size}, too small for the instructions' "
            f"characters and {tok.state_bins} state bins ({str(error).splitlines()[-1][:200]})"
        ) from None


def model_vocab_size(tok: ml_collections.ConfigDict, with_actions: bool = True) -> int:
    """Embedding rows of the model: fixed by the config (and a given text model), not by fitting.

    Without action tokens (flow mode: the prompt has no action postfix) no ids are reserved for them.
    """
    if tok.vocab_size:
        return tok.vocab_size
    text = SentencePieceTokenizer.from_file(tok.text_model).vocab_size if tok.text_model else tok.text_vocab_size
    return text + (tok.action_vocab_size if with_actions else 0) + tok.reserved_tail


def prompt_tokenizer(
    tok: ml_collections.ConfigDict, text: SentencePieceTokenizer, actions: ActionTokenizer | None
) -> PromptTokenizer:
    """The prompt tokenizer of a run; ``actions`` None (flow mode) writes prefixes only."""
    if not tok.text_model and text.vocab_size > tok.text_vocab_size:
        raise ConfigError(f"the text model has {text.vocab_size} ids, more than tokenizer.text_vocab_size")
    return PromptTokenizer(
        text,
        actions,
        max_length=tok.max_length,
        vocab_size=model_vocab_size(tok, with_actions=actions is not None),
        reserved_tail=tok.reserved_tail,
        action_ids=tok.action_vocab_size if actions is not None else 0,
        state_bins=tok.state_bins,
        id_order=tok.get("action_id_order", "up"),
    )


def files_to_bytes(text: SentencePieceTokenizer, actions: ActionTokenizer | None) -> dict[str, bytes]:
    """The run's tokenizer files, as they are written into its workdir (no action file without actions)."""
    files = {TEXT_FILE: text.model_proto}
    if actions is not None:
        with tempfile.TemporaryDirectory() as tmp:
            actions.save(pathlib.Path(tmp) / ACTION_FILE)
            files[ACTION_FILE] = (pathlib.Path(tmp) / ACTION_FILE).read_bytes()
    return files


def from_files(
    directory: pathlib.Path, *, horizon: int, action_dim: int, normalization: str, with_actions: bool = True
) -> tuple[SentencePieceTokenizer, ActionTokenizer | None]:
    """The text model and (``with_actions``) the action tokenizer a run wrote into ``directory``."""
    text = SentencePieceTokenizer.from_file(directory / TEXT_FILE)
    if not with_actions:
        return text, None
    actions = load_action_file(
        directory / ACTION_FILE, horizon=horizon, action_dim=action_dim, normalization=normalization
    )
    return text, actions
