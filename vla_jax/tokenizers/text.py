"""Text prompt tokenization.

:class:`WordHashTokenizer` lower-cases an instruction, splits it into words and
maps each word to ``1 + fingerprint(word) % (vocab_size - 1)`` (0 is padding):
no vocabulary file and no training, and a whole word is one token, which a
small model binds to what it sees far faster than bytes. PaliGemma-class models
use a sentencepiece vocabulary instead.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PAD_ID = 0
_PUNCTUATION = r"[^a-z0-9' ]"


@dataclasses.dataclass(frozen=True)
class WordHashTokenizer:
    """Words to hashed ids, padded or truncated to ``max_length``."""

    vocab_size: int
    max_length: int

    def encode_tf(self, text):
        """Ids ``[max_length] int32`` and mask ``[max_length] bool`` for one scalar string tensor."""
        import tensorflow as tf

        words = tf.strings.split(tf.strings.regex_replace(tf.strings.lower(text), _PUNCTUATION, " "))
        words = words[: self.max_length]
        ids = tf.cast(tf.strings.to_hash_bucket_fast(words, self.vocab_size - 1), tf.int32) + 1
        ids = tf.ensure_shape(tf.pad(ids, [[0, self.max_length - tf.shape(ids)[0]]]), [self.max_length])
        return ids, ids != PAD_ID

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Batch form of :meth:`encode_tf`: ``ids [N, max_length]`` and ``mask``, as NumPy."""
        ids = np.zeros((len(texts), self.max_length), np.int32)
        for row, text in enumerate(texts):
            ids[row] = np.asarray(self.encode_tf(text)[0])
        return ids, ids != PAD_ID
