import numpy as np

from vla_jax.data import demo
from vla_jax.tokenizers import WordHashTokenizer


def test_words_map_to_stable_distinct_ids_with_padding():
    tokenizer = WordHashTokenizer(vocab_size=1024, max_length=8)
    ids, mask = tokenizer.encode(["Pick up the RED block.", "pick up the red block", "grab the blue one"])
    np.testing.assert_array_equal(ids[0], ids[1])  # case and punctuation do not matter
    assert mask[0].sum() == 5 and not mask[0, 5:].any() and (ids[0, 5:] == 0).all()
    assert ids.min() >= 0 and ids.max() < 1024 and (ids[mask] > 0).all()
    color_ids, _ = tokenizer.encode(list(demo.COLORS))
    assert len(set(color_ids[:, 0].tolist())) == len(demo.COLORS)  # the demo's colours never collide


def test_truncation():
    tokenizer = WordHashTokenizer(vocab_size=64, max_length=3)
    ids, mask = tokenizer.encode(["a b c d e"])
    assert ids.shape == (1, 3) and mask.all()
    np.testing.assert_array_equal(ids, tokenizer.encode(["a b c"])[0])
