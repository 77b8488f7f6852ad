"""Every tokenizer option of a run (``config.tokenizer``), with its default.

Used by ``model.mode = "fast"``: the π0-FAST prompt of a text model and an
action tokenizer.
"""

from __future__ import annotations

import ml_collections

ACTION_KINDS = ("fast", "binning")


def tokenizer_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Actions.
    c.action = "fast"  # "fast" (DCT + BPE) or "binning" (256 uniform bins per value, the RT-2 baseline)
    c.action_file = ""  # a file from `vla-jax tokenizer fit`; empty: fit on the training split at start
    c.action_vocab_size = 1024  # FAST BPE vocabulary (an upper bound); ids reserved for actions in the model
    c.fast_scale = 10.0  # FAST's gamma: DCT coefficients are multiplied by it and rounded
    c.fit_chunks = 20_000  # action chunks sampled from the training split to fit FAST
    # Text.
    c.text_model = ""  # a sentencepiece .model (e.g. PaliGemma's); empty: train a small BPE on the instructions
    c.text_vocab_size = (
        1024  # size of the text model trained when text_model is empty (>= 256 bytes + state bins + merges)
    )
    c.vocab_size = 0  # model vocabulary; 0: text ids + action ids. Else action ids take its tail
    c.reserved_tail = 0  # ids at the very end of the vocabulary that action ids must not use
    c.action_id_order = "up"  # action token t is id start + t ("up"), or counts down from the top ("down": π0-FAST)
    # Prompt.
    c.max_length = 64  # prompt ids per example (prefix + postfix); longer prompts lose their end
    c.state_bins = 256  # state values are written as bin numbers over [-1, 1]
    c.decode_tokens = 0  # greedy decoding length at validation (0: max_length)
    return c
