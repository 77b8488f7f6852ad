"""The sentencepiece text model and the π0-FAST prompt: layout, masks, id ranges, extraction."""

import numpy as np
import pytest

from vla_jax.models.transformer import prefix_lm_mask
from vla_jax.tokenizers import BinningTokenizer, FASTTokenizer, PromptTokenizer, SentencePieceTokenizer
from vla_jax.tokenizers.build import text_corpus
from vla_jax.tokenizers.evaluate import smooth_chunks
from vla_jax.tokenizers.prompt import discretize_state
from vla_jax.tokenizers.text import train_text_model

INSTRUCTIONS = ["pick up the red block", "Grab the BLUE cube.", "open_the_drawer", "stack the green bowl on the plate"]


@pytest.fixture(scope="module")
def text():
    return train_text_model(text_corpus(INSTRUCTIONS, 256), vocab_size=400)


@pytest.fixture(scope="module")
def fast():
    return FASTTokenizer.fit(smooth_chunks(0, 400, 10, 3), vocab_size=256)


def _batch(rng, n):
    states = rng.uniform(-1, 1, (n, 5)).astype(np.float32)
    masks = np.ones((n, 5), bool)
    masks[:, 4] = False  # a padded state dim is never written
    return [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)], states, masks


def test_text_model_round_trips_and_has_gemma_special_ids(text, tmp_path):
    assert (text.pad_id, text.eos_id, text.bos_id) == (0, 1, 2)
    sentence = "Task: pick up the red block, State: 12 255 0;\n"
    assert text.decode(text.encode([sentence])[0]) == sentence
    assert text.decode(text.encode(["ünseen wörds ✓"])[0]) == "ünseen wörds ✓"  # byte fallback
    text.save(tmp_path / "t.model")
    assert SentencePieceTokenizer.from_file(tmp_path / "t.model").encode([sentence]) == text.encode([sentence])
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        SentencePieceTokenizer.from_file(tmp_path / "bad.model")


def test_layout_and_masks(text, fast):
    rng = np.random.default_rng(1)
    instructions, states, masks = _batch(rng, 4)
    chunks = smooth_chunks(int(rng.integers(1 << 30)), 4, 10, 3)
    prompt = PromptTokenizer(text, fast, max_length=96)
    out = prompt.tokenize(instructions, states, masks, chunks)
    for row in range(4):
        tokens, valid = out["prompt_tokens"][row], out["prompt_mask"][row]
        ar, loss = out["prompt_ar_mask"][row], out["prompt_loss_mask"][row]
        n = valid.sum()
        assert valid[:n].all() and not valid[n:].any() and (tokens[n:] == text.pad_id).all()
        prefix_len = int((valid & ~ar).sum())
        assert not ar[:prefix_len].any() and ar[prefix_len:n].all()  # prefix, then postfix, contiguous
        np.testing.assert_array_equal(loss, ar & valid)  # loss only on the postfix
        assert tokens[0] == text.bos_id and tokens[n - 1] == text.eos_id
        prefix_text = text.decode(tokens[1:prefix_len])
        bins = " ".join(str(b) for b in discretize_state(states[row, :4], 256))
        assert prefix_text.endswith(f", State: {bins};\n") and prefix_text.startswith("Task: ")
        instruction = prefix_text[len("Task: ") : prefix_text.index(", State:")]
        assert instruction == " ".join(instructions[row].lower().replace("_", " ").split()).rstrip(".")
        action_ids = [t - prompt.action_start for t in tokens[prefix_len:n] if t >= prompt.action_start]
        assert action_ids == fast.encode(chunks[row : row + 1])[0]

    # The attention mask this gives: prefix bidirectional, postfix causal, padding unseen.
    mask = np.asarray(prefix_lm_mask(out["prompt_mask"], out["prompt_ar_mask"]))[0]
    valid, ar = out["prompt_mask"][0], out["prompt_ar_mask"][0]
    prefix_len, n = int((valid & ~ar).sum()), int(valid.sum())
    assert mask[:prefix_len, :prefix_len].all()  # prefix sees all of the prefix
    assert not mask[:prefix_len, prefix_len:].any()  # ... and none of the postfix
    np.testing.assert_array_equal(mask[prefix_len:n, prefix_len:n], np.tril(np.ones((n - prefix_len,) * 2, bool)))
    assert mask[prefix_len:n, :prefix_len].all() and not mask[:, n:].any()


def test_truncation_is_counted(text, fast):
    rng = np.random.default_rng(2)
    instructions, states, masks = _batch(rng, 4)
    chunks = smooth_chunks(int(rng.integers(1 << 30)), 4, 10, 3)
    full = PromptTokenizer(text, fast, max_length=128).tokenize(instructions, states, masks, chunks)
    lengths = full["prompt_mask"].sum(1)
    cut = int(np.sort(lengths)[1])  # the two longest prompts do not fit
    short = PromptTokenizer(text, fast, max_length=cut).tokenize(instructions, states, masks, chunks)
    np.testing.assert_array_equal(short["prompt_truncated"], lengths > cut)
    assert not full["prompt_truncated"].any()
    np.testing.assert_array_equal(short["prompt_tokens"], full["prompt_tokens"][:, :cut])


def test_action_ids_never_collide_with_text_ids(text, fast):
    instructions, states, masks = _batch(np.random.default_rng(3), 4)
    # Default: the action range sits above the whole text vocabulary.
    disjoint = PromptTokenizer(text, fast, max_length=96)
    assert disjoint.action_start >= text.vocab_size
    assert disjoint.vocab_size == text.vocab_size + fast.vocab_size
    # Carved out of the tail of a vocabulary the text model fills: text ids there become unknown.
    carved = PromptTokenizer(text, fast, max_length=96, vocab_size=text.vocab_size, reserved_tail=10)
    assert carved.action_range[1] == text.vocab_size - 10
    out = carved.tokenize(instructions, states, masks)
    prefix = out["prompt_tokens"][out["prompt_mask"]]
    assert not ((prefix >= carved.action_start) & (prefix < carved.action_range[1])).any()
    raw = np.concatenate(text.encode([f"Task: {i}" for i in instructions]))
    assert ((raw >= carved.action_start) & (raw < carved.action_range[1])).any()  # the text model does use the range
    assert (prefix == text.unk_id).any()


def test_extract_actions_reads_ids_not_text(text, fast):
    rng = np.random.default_rng(4)
    chunks = smooth_chunks(int(rng.integers(1 << 30)), 3, 10, 3)
    prompt = PromptTokenizer(text, fast, max_length=96)
    postfixes = [prompt.postfix(ids) for ids in fast.encode(chunks)]
    width = max(map(len, postfixes)) + 2
    generated = np.full((5, width), prompt.eos, np.int32)
    for row, postfix in enumerate(postfixes):
        generated[row, : len(postfix)] = postfix
    ids = fast.encode(chunks[:1])[0]
    generated[3, :] = prompt.action_start + ids[0]  # never terminated: runs off the end
    generated[4, :] = text.encode(["Action: |"])[0][0]  # no action ids at all
    actions, valid = prompt.extract_actions(generated)
    assert actions.shape == (5, 10, 3)
    np.testing.assert_array_equal(valid, [True, True, True, False, False])
    reference, _ = fast.decode(fast.encode(chunks))
    np.testing.assert_allclose(actions[:3], reference, atol=1e-6)


def test_binning_behind_the_same_prompt(text):
    chunks = smooth_chunks(5, 2, 10, 3)
    instructions, states, masks = _batch(np.random.default_rng(5), 2)
    prompt = PromptTokenizer(text, BinningTokenizer(10, 3), max_length=128)
    out = prompt.tokenize(instructions, states, masks, chunks)
    postfix = out["prompt_tokens"][0][out["prompt_ar_mask"][0]]
    assert ((postfix >= prompt.action_start) & (postfix < prompt.action_range[1])).sum() == 30
    actions, valid = prompt.extract_actions(postfix[None])
    assert valid[0] and np.abs(actions[0] - chunks[0]).max() <= 1 / 256 + 1e-6


def test_pi0_fast_layout_counts_action_ids_down_from_below_the_reserved_tail(text, fast):
    """π0-FAST: action token t is id vocab - 1 - 128 - t, text ids keep their own meaning (Gemma's special ids)."""
    assert (text.pad_id, text.eos_id, text.bos_id, text.unk_id) == (0, 1, 2, 3)
    vocab = text.vocab_size + fast.vocab_size + 128
    prompt = PromptTokenizer(
        text, fast, max_length=128, vocab_size=vocab, reserved_tail=128, action_ids=fast.vocab_size, id_order="down"
    )
    chunks = smooth_chunks(7, 3, 10, 3)
    tokens = fast.encode(chunks)
    postfix = prompt.postfix(tokens[0])
    marker = len(text.encode(["Action: "])[0])
    assert postfix[marker : marker + len(tokens[0])] == [vocab - 1 - 128 - t for t in tokens[0]]
    low, high = prompt.action_range
    assert high == vocab - 128 and low == high - fast.vocab_size
    generated = np.full((3, 128), prompt.eos, np.int32)
    for row, ids in enumerate(tokens):
        generated[row, : len(prompt.postfix(ids))] = prompt.postfix(ids)
    actions, valid = prompt.extract_actions(generated)
    reference, _ = fast.decode(tokens)
    assert valid.all()
    np.testing.assert_allclose(actions, reference, atol=1e-6)
    up = PromptTokenizer(text, fast, max_length=128, vocab_size=vocab, reserved_tail=128, action_ids=fast.vocab_size)
    assert up.postfix(tokens[0]) != postfix  # the two layouts differ
