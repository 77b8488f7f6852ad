"""Action tokenizer speed and compression: FAST (DCT + BPE) against uniform binning and a byte-level BPE FAST.

Generates smooth normalized action chunks (sums of low-frequency sinusoids in
[-1, 1]), fits both tokenizers on them, then measures in one process:

- ``*_encode_chunks_per_s`` / ``*_decode_chunks_per_s``: chunks/s of one batched
  ``encode`` / ``decode`` call over all chunks (best of ``--repeats``);
- ``*_decode_one_chunk_us``: latency of decoding a single chunk, as at inference;
- ``*_tokens_per_chunk``: mean ids per chunk (binning is always ``T*D``);
- ``*_rmse``: round-trip error in normalized units;
- ``fast_vs_binning_*_ratio``: FAST figure / binning figure;
- ``reference_*``: the same for a reference FAST built like the original's
  (the same DCT and quantization, strings of ``chr(coefficient - min)``, a
  byte-level BPE from Hugging Face ``tokenizers`` with no pre-splitting and
  pieces of any length: benchmark-only, not a runtime dependency), and
  ``fast_vs_reference_*_ratio``. Both round-trip the same integers, so their
  RMSE is equal.

    python benchmarks/tokenizer_speed.py [--chunks 2000] [--horizon 10] [--dim 7] [--vocab 1024] [--scale 10]
    python benchmarks/tokenizer_speed.py --horizon 30 --dim 26    # a high-DoF robot at 30 Hz (1-s chunks)

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _measure(tokenizer, chunks, repeats: int) -> dict:
    import numpy as np

    n = len(chunks)
    ids = tokenizer.encode(chunks)
    actions, valid = tokenizer.decode(ids)
    assert valid.all(), "a clean round trip must decode as valid"
    encode_s = _best_seconds(lambda: tokenizer.encode(chunks), repeats)
    decode_s = _best_seconds(lambda: tokenizer.decode(ids), repeats)
    single = ids[: min(n, 200)]
    one_s = _best_seconds(lambda: [tokenizer.decode([row]) for row in single], repeats) / len(single)
    return {
        "encode_chunks_per_s": round(n / encode_s, 1),
        "decode_chunks_per_s": round(n / decode_s, 1),
        "decode_one_chunk_us": round(one_s * 1e6, 1),
        "tokens_per_chunk": round(float(np.mean([len(row) for row in ids])), 2),
        "rmse": round(float(np.sqrt(((actions - chunks) ** 2).mean())), 5),
        "vocab_size": tokenizer.vocab_size,
    }


class ByteLevelFAST:
    """The reference: FAST's DCT and quantization, then a byte-level BPE (Hugging Face ``tokenizers``)."""

    def __init__(self, fit_chunks, vocab_size: int, scale: float):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        from vla_jax.tokenizers.fast import dct_coefficients

        self.dct, self.scale = dct_coefficients, scale
        self.horizon, self.dim = fit_chunks.shape[1:]
        coefficients = dct_coefficients(fit_chunks, scale)
        self.low = int(coefficients.min()) - 64  # margin for held-out chunks (a code point is never negative)
        self.bpe = Tokenizer(models.BPE())
        self.bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        self.bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=2, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), max_token_length=10_000,
        )  # fmt: skip
        self.bpe.train_from_iterator(self._strings(coefficients), trainer)
        self.vocab_size = self.bpe.get_vocab_size()

    def _strings(self, coefficients) -> list[str]:
        return ["".join(map(chr, row - self.low)) for row in coefficients]

    def encode(self, chunks) -> list[list[int]]:
        return [e.ids for e in self.bpe.encode_batch(self._strings(self.dct(chunks, self.scale)))]

    def decode(self, ids):
        import numpy as np

        from vla_jax.tokenizers.fast import inverse_dct_coefficients

        texts = self.bpe.decode_batch([list(row) for row in ids])
        coefficients = np.array([[ord(c) + self.low for c in text] for text in texts])
        return inverse_dct_coefficients(coefficients, self.horizon, self.dim, self.scale), np.ones(len(ids), bool)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--dim", type=int, default=7)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from vla_jax.tokenizers.binning import BinningTokenizer
    from vla_jax.tokenizers.evaluate import smooth_chunks
    from vla_jax.tokenizers.fast import FASTTokenizer

    fit_chunks = smooth_chunks(0, args.chunks, args.horizon, args.dim)
    chunks = smooth_chunks(1, args.chunks, args.horizon, args.dim)  # held out from fitting
    start = time.perf_counter()
    fast = FASTTokenizer.fit(fit_chunks, vocab_size=args.vocab, scale=args.scale)
    fit_s = time.perf_counter() - start
    binning = BinningTokenizer.fit(fit_chunks)
    reference = ByteLevelFAST(fit_chunks, args.vocab, args.scale)

    results = {
        "fast": _measure(fast, chunks, args.repeats),
        "binning": _measure(binning, chunks, args.repeats),
        "reference": _measure(reference, chunks, args.repeats),
    }
    out = {f"{kind}_{key}": value for kind, figures in results.items() for key, value in figures.items()}
    for other in ("binning", "reference"):
        for key in ("encode_chunks_per_s", "decode_chunks_per_s", "tokens_per_chunk"):
            name = key.removesuffix("_chunks_per_s")
            out[f"fast_vs_{other}_{name}_ratio"] = round(results["fast"][key] / results[other][key], 3)
    out.update(
        fast_fit_s=round(fit_s, 3),
        fast_clipped_coefficients=fast.clipped_count,
        chunks=args.chunks,
        horizon=args.horizon,
        dim=args.dim,
        requested_vocab=args.vocab,
        scale=args.scale,
    )
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
