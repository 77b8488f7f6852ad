"""Text tokenization: sentencepiece models.

:class:`SentencePieceTokenizer` wraps any sentencepiece ``.model`` file (the
PaliGemma/Gemma tokenizer, or one made by :func:`train_text_model`); the
π0-FAST prompt (:mod:`vla_jax.tokenizers.prompt`) is built on it.
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from vla_jax.files import write_atomically


class SentencePieceTokenizer:
    """A sentencepiece model: text to ids and back, with its special ids."""

    def __init__(self, model_proto: bytes, *, name: str = "<in memory>"):
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except Exception as error:  # sentencepiece raises RuntimeError/OSError on a bad proto
            raise ValueError(f"{name} is not a sentencepiece model: {error}") from error
        self.model_proto = model_proto
        self.name = name

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ValueError(f"sentencepiece model {path} does not exist")
        return cls(path.read_bytes(), name=str(path))

    def save(self, path: str | os.PathLike) -> None:
        """Writes the model proto (atomically: a crash never leaves half a file)."""
        write_atomically(pathlib.Path(path), self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return max(self._sp.pad_id(), 0)

    @property
    def bos_id(self) -> int | None:
        return self._sp.bos_id() if self._sp.bos_id() >= 0 else None

    @property
    def eos_id(self) -> int:
        if self._sp.eos_id() < 0:
            raise ValueError(f"sentencepiece model {self.name} has no end-of-sequence id")
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


def train_text_model(sentences: Iterable[str], vocab_size: int, symbols: Sequence[str] = ()) -> SentencePieceTokenizer:
    """A small BPE text model (Gemma's special ids: pad 0, eos 1, bos 2, unk 3).

    Byte fallback makes any text encodable, so the vocabulary holds 256 byte
    pieces besides the merges; ``vocab_size`` is an upper bound. Each of
    ``symbols`` is always one piece (longest match first). Deterministic.
    """
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)),
        model_writer=writer,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=list(symbols),
        num_threads=1,
        minloglevel=2,
    )
    return SentencePieceTokenizer(writer.getvalue(), name="trained text model")
