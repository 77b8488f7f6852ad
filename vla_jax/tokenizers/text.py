"""Text prompt tokenization.

:class:`ByteTokenizer` maps UTF-8 bytes to ids ``1..256`` (0 is padding): no
vocabulary file, no training, any language. It is the tokenizer of the small
models; PaliGemma-class models use a sentencepiece vocabulary instead.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes to ids, padded or truncated to ``max_length``."""

    max_length: int

    vocab_size = 257

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``ids [N, max_length] int32`` and ``mask [N, max_length] bool``."""
        ids = np.zeros((len(texts), self.max_length), np.int32)
        for i, text in enumerate(texts):
            raw = np.frombuffer(text.encode("utf-8"), np.uint8)[: self.max_length]
            ids[i, : len(raw)] = raw.astype(np.int32) + 1
        return ids, ids != PAD_ID

    def encode_tf(self, text):
        """tf.data twin of :meth:`encode` for one scalar string tensor."""
        import tensorflow as tf

        raw = tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32)[: self.max_length] + 1
        ids = tf.pad(raw, [[0, self.max_length - tf.shape(raw)[0]]])
        ids = tf.ensure_shape(ids, [self.max_length])
        return ids, ids != PAD_ID
