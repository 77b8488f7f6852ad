"""The π0-FAST prompt: instruction, discretized state and action tokens in one sequence.

Layout of one example (``max_length`` ids, right-padded)::

    prefix  (bidirectional, no loss):  [BOS] "Task: <instruction>, State: <s_1 s_2 ...>;\\n"
    postfix (causal, the only loss):   "Action: " <action ids> "|" [EOS]

The state is quantile-normalized, so it is cut into ``state_bins`` uniform bins
over [-1, 1] and written as numbers; only valid (unpadded) dims are written.
Action ids live in a reserved range of the model's vocabulary: the text model's
ids stay below it. Within the range, action token ``t`` is id ``start + t``
(``id_order="up"``) or, as π0-FAST lays them out, ``top - t`` counting down
from the range's last id (``"down"``: with PaliGemma's 257,152 ids and 128
reserved at the tail, ``257152 - 1 - 128 - t``), and a text id that would fall inside it (possible when the
range is carved out of a big text vocabulary's tail) becomes the unknown id, so
the two can never be confused. Action tokens are read back from generated ids
by id range alone, never through text.
"""

from __future__ import annotations

import numpy as np

from vla_jax.tokenizers.action_base import ActionTokenizer
from vla_jax.tokenizers.text import SentencePieceTokenizer

ID_ORDERS = ("up", "down")
PROMPT_KEYS = ("prompt_tokens", "prompt_mask", "prompt_ar_mask", "prompt_loss_mask", "prompt_truncated")


def discretize_state(state: np.ndarray, bins: int) -> np.ndarray:
    """Bin index in ``[0, bins)`` of each value over [-1, 1] (values outside are clipped)."""
    scaled = (np.clip(state, -1.0, 1.0) + 1.0) / 2.0 * bins
    return np.minimum(scaled.astype(np.int64), bins - 1)


def clean_instruction(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split()).rstrip(".")


class PromptTokenizer:
    """Builds π0-FAST prompts and reads action chunks back from generated ids.

    ``vocab_size`` is the model's vocabulary (embedding rows). 0 gives the text
    model's vocabulary plus ``action_ids`` (default: the action vocabulary), so
    the ranges are disjoint by construction. A larger value (e.g. PaliGemma's
    257,152) places the action ids at its tail, just below the last
    ``reserved_tail`` ids. With ``actions`` None (flow mode) no action ids are
    reserved and prompts are prefixes only.
    """

    def __init__(
        self,
        text: SentencePieceTokenizer,
        actions: ActionTokenizer | None,
        *,
        max_length: int,
        vocab_size: int = 0,
        reserved_tail: int = 0,
        action_ids: int = 0,
        state_bins: int = 256,
        id_order: str = "up",
    ):
        self.text, self.actions = text, actions
        self.max_length, self.state_bins = max_length, state_bins
        action_vocab = actions.vocab_size if actions is not None else 0
        self.action_ids = action_ids or action_vocab
        if self.action_ids < action_vocab:
            raise ValueError(f"{self.action_ids} reserved action ids cannot hold a {action_vocab}-id action tokenizer")
        self.vocab_size = vocab_size or text.vocab_size + self.action_ids + reserved_tail
        self.action_start = self.vocab_size - reserved_tail - self.action_ids
        if self.action_start < 1:
            raise ValueError(
                f"vocabulary of {self.vocab_size} ids cannot hold {self.action_ids} action ids "
                f"and {reserved_tail} reserved ids"
            )
        if id_order not in ID_ORDERS:
            raise ValueError(f"action id order {id_order!r}; expected one of {ID_ORDERS}")
        self.id_order = id_order
        self.bos = [text.bos_id] if text.bos_id is not None else []
        self.eos, self.pad = text.eos_id, text.pad_id
        self._action_marker, self._end_marker = (self._text_ids(t) for t in self.text.encode(["Action: ", "|"]))

    @property
    def action_range(self) -> tuple[int, int]:
        """``[low, high)``: the model ids the action tokenizer's ids map to."""
        used = self.actions.vocab_size if self.actions is not None else 0
        if self.id_order == "up":
            return self.action_start, self.action_start + used
        top = self.action_start + self.action_ids  # one past the range's last id
        return top - used, top

    def to_model_ids(self, action_ids) -> list[int]:
        """Action tokenizer ids to model ids."""
        if self.id_order == "up":
            return [self.action_start + int(i) for i in action_ids]
        return [self.action_start + self.action_ids - 1 - int(i) for i in action_ids]

    def from_model_ids(self, ids) -> list[int]:
        """Model ids inside :attr:`action_range` back to action tokenizer ids."""
        if self.id_order == "up":
            return [int(i) - self.action_start for i in ids]
        return [self.action_start + self.action_ids - 1 - int(i) for i in ids]

    def _text_ids(self, ids: list[int]) -> list[int]:
        """Text ids with any id inside the action range replaced by the unknown id."""
        low, high = self.action_range
        return [self.text.unk_id if low <= i < high else i for i in ids]

    def prefixes(self, instructions, states: np.ndarray, state_masks: np.ndarray) -> list[list[int]]:
        """``[BOS] "Task: ..., State: ...;\\n"`` ids for each example."""
        texts = []
        for instruction, state, mask in zip(instructions, states, state_masks, strict=True):
            if isinstance(instruction, bytes):
                instruction = instruction.decode("utf-8", errors="replace")
            bins = " ".join(
                str(b) for b in discretize_state(np.asarray(state)[np.asarray(mask, bool)], self.state_bins)
            )
            texts.append(f"Task: {clean_instruction(instruction)}, State: {bins};\n")
        return [self.bos + self._text_ids(ids) for ids in self.text.encode(texts)]

    def postfix(self, action_ids: list[int]) -> list[int]:
        """``"Action: " <action ids> "|" [EOS]`` for one example's action-tokenizer ids."""
        return [*self._action_marker, *self.to_model_ids(action_ids), *self._end_marker, self.eos]

    def tokenize(self, instructions, states, state_masks, actions: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """A batch of prompts: ``prompt_tokens``, ``prompt_mask`` (real tokens), ``prompt_ar_mask``
        (causal postfix), ``prompt_loss_mask`` ``[B, max_length]`` and ``prompt_truncated [B]``
        (the sequence was longer than ``max_length`` and lost its end).

        Without ``actions`` (inference) only the prefix is written.
        """
        prefixes = self.prefixes(instructions, states, state_masks)
        if actions is not None and self.actions is None:
            raise ValueError("this prompt tokenizer has no action tokenizer (flow mode): prompts are prefixes only")
        postfixes = (
            [[] for _ in prefixes] if actions is None else [self.postfix(a) for a in self.actions.encode(actions)]
        )
        size = (len(prefixes), self.max_length)
        out = {"prompt_tokens": np.full(size, self.pad, np.int32)}
        out |= {k: np.zeros(size, bool) for k in ("prompt_mask", "prompt_ar_mask", "prompt_loss_mask")}
        out["prompt_truncated"] = np.zeros(len(prefixes), bool)
        for row, (prefix, postfix) in enumerate(zip(prefixes, postfixes, strict=True)):
            sequence = (prefix + postfix)[: self.max_length]
            n, n_prefix = len(sequence), min(len(prefix), self.max_length)
            out["prompt_tokens"][row, :n] = sequence
            out["prompt_mask"][row, :n] = True
            out["prompt_ar_mask"][row, n_prefix:n] = True
            out["prompt_loss_mask"][row, n_prefix:n] = True
            out["prompt_truncated"][row] = len(prefix) + len(postfix) > self.max_length
        return out

    def extract_actions(self, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Action chunks ``[B, T, D]`` and validity ``[B]`` from generated postfix ids ``[B, G]``.

        Reads the first run of action-range ids. A chunk is valid when the run is
        followed by the end marker or EOS (not cut off by the generation length)
        and the action tokenizer decodes it cleanly.
        """
        generated = np.asarray(generated)
        runs, terminated = [], np.zeros(len(generated), bool)
        low, high = self.action_range
        in_range = (generated >= low) & (generated < high)
        stops = set(self._end_marker[:1]) | {self.eos}
        for row, ids in enumerate(generated):
            hits = np.flatnonzero(in_range[row])
            if hits.size == 0:
                runs.append([])
                continue
            start = hits[0]
            end = start + (np.argmin(in_range[row, start:]) if not in_range[row, start:].all() else len(ids) - start)
            runs.append(self.from_model_ids(ids[start:end]))
            terminated[row] = end < len(ids) and int(ids[end]) in stops
        actions, valid = self.actions.decode(runs)
        return actions, valid & terminated
