"""FAST (DCT + BPE) and binning action tokenizers: round trips, order, malformed ids, files."""

import json

import numpy as np
import pytest
import scipy.fft

from vla_jax.tokenizers.action_base import ActionTokenizer, content_checksum, load_action_tokenizer
from vla_jax.tokenizers.binning import BinningTokenizer
from vla_jax.tokenizers.evaluate import smooth_chunks
from vla_jax.tokenizers.fast import FASTTokenizer, dct_coefficients, inverse_dct_coefficients


@pytest.fixture(scope="module")
def fast_10x4():
    chunks = smooth_chunks(0, 500, 10, 4)
    return FASTTokenizer.fit(chunks, vocab_size=512), chunks


@pytest.mark.parametrize("horizon,dim", [(10, 3), (25, 7), (50, 5)])
def test_fast_round_trip_within_quantization_bound(horizon, dim):
    scale = 10.0
    chunks = smooth_chunks(horizon, 500, horizon, dim)
    tokenizer = FASTTokenizer.fit(chunks, vocab_size=1024, scale=scale)
    ids = tokenizer.encode(chunks)
    assert len(ids) == 500 and all(0 <= i < tokenizer.vocab_size for row in ids for i in row)
    actions, valid = tokenizer.decode(ids)
    assert actions.shape == (500, horizon, dim) and actions.dtype == np.float32 and valid.all()
    assert tokenizer.clipped_count == 0
    # BPE is lossless: the result is exactly the inverse of the integer coefficients.
    expected = inverse_dct_coefficients(dct_coefficients(chunks, scale), horizon, dim, scale)
    np.testing.assert_array_equal(actions, expected)
    error = actions - chunks
    l2 = np.sqrt((error**2).sum(axis=(1, 2)))
    assert l2.max() <= 0.5 / scale * np.sqrt(horizon * dim) + 1e-5
    rmse = float(np.sqrt((error**2).mean()))
    assert 0.005 < rmse < 0.035  # ≈ (1/γ)/sqrt(12) = 0.029 for the coefficients that are not near zero


def test_frequency_major_order(fast_10x4):
    tokenizer, _ = fast_10x4
    horizon, dim = 10, 4
    for freq, d in [(0, 0), (0, 3), (1, 2), (4, 1), (9, 3)]:
        coeffs = np.zeros((1, horizon, dim))
        coeffs[0, freq, d] = 0.5  # -> integer 5 after scaling by γ=10
        chunk = scipy.fft.idct(coeffs, type=2, norm="ortho", axis=1)
        for ints in (dct_coefficients(chunk, 10.0), tokenizer.coefficients(chunk)):
            assert ints.shape == (1, horizon * dim)
            assert np.flatnonzero(ints[0]).tolist() == [freq * dim + d] and ints[0, freq * dim + d] == 5
        actions, valid = tokenizer.decode(tokenizer.encode(chunk))
        assert valid.all()
        np.testing.assert_allclose(actions, chunk, atol=1e-6)


def test_fast_uses_fewer_tokens_than_binning(fast_10x4):
    tokenizer, chunks = fast_10x4
    fast_tokens = np.mean([len(row) for row in tokenizer.encode(chunks)])
    binning_tokens = np.mean([len(row) for row in BinningTokenizer(10, 4).encode(chunks)])
    assert binning_tokens == 40
    assert fast_tokens < 0.6 * binning_tokens


def test_fast_clips_coefficients_outside_the_alphabet(fast_10x4):
    tokenizer, chunks = fast_10x4
    wild = np.concatenate([chunks[:2], np.full((1, 10, 4), 30.0), np.full((1, 10, 4), -30.0)])
    ids = tokenizer.encode(wild)
    assert tokenizer.clipped_count > 0
    actions, valid = tokenizer.decode(ids)
    assert valid.all()  # every alphabet character is a piece, so clipped values still encode
    # a constant chunk has only the DC coefficient; it is clipped to the alphabet's end
    high, low = tokenizer.offset + tokenizer.alphabet_size - 1, tokenizer.offset
    np.testing.assert_allclose(actions[2], high / 10 / np.sqrt(10), rtol=1e-6)
    np.testing.assert_allclose(actions[3], low / 10 / np.sqrt(10), rtol=1e-6)
    np.testing.assert_array_equal(actions[:2], tokenizer.decode(tokenizer.encode(chunks[:2]))[0])
    tokenizer.clipped_count = 0


@pytest.mark.parametrize("kind", ["fast", "binning"])
def test_decode_malformed_ids_never_raises(kind, fast_10x4):
    tokenizer = fast_10x4[0] if kind == "fast" else BinningTokenizer(10, 4)
    chunks = fast_10x4[1][:3]
    good = tokenizer.encode(chunks)
    clean, clean_valid = tokenizer.decode(good)
    assert clean_valid.all()
    vocab = tokenizer.vocab_size
    row = good[0]
    malformed = [
        row[:-1],  # truncated
        row + row,  # extended
        row[:-1] + [vocab],  # out of range
        [-1] + row[1:],  # negative
        [],  # empty
        None,
        "garbage",
        [1.5] * len(row),
        [True] * len(row),
        [10**30] + row[1:],
        [[1, 2], [3]],
    ]
    if kind == "fast":
        malformed.append([0] + row)  # the unknown piece
    actions, valid = tokenizer.decode(malformed)
    assert actions.shape == (len(malformed), 10, 4) and actions.dtype == np.float32
    assert not valid.any() and np.isfinite(actions).all()
    np.testing.assert_array_equal(actions[1], clean[0])  # extended: truncated to the first T*D values
    # numpy ints and arrays are fine, and decode to the same chunks
    for variant in ([np.int32(i) for i in row], np.asarray(row, np.int64), tuple(row)):
        actions, valid = tokenizer.decode([variant])
        assert valid.all()
        np.testing.assert_array_equal(actions[0], clean[0])
    assert tokenizer.decode([])[0].shape == (0, 10, 4)
    for junk in (None, 7, "ids"):  # not a list of samples at all: one invalid sample
        actions, valid = tokenizer.decode(junk)
        assert actions.shape == (1, 10, 4) and valid.tolist() == [False]
    actions, valid = tokenizer.decode([good[1], row[:5], good[2]])  # one bad sample does not spoil others
    assert valid.tolist() == [True, False, True]
    np.testing.assert_array_equal(actions[[0, 2]], clean[[1, 2]])


@pytest.mark.parametrize("kind", ["fast", "binning"])
def test_encode_checks_shapes(kind, fast_10x4):
    tokenizer = fast_10x4[0] if kind == "fast" else BinningTokenizer(10, 4)
    chunks = fast_10x4[1]
    assert tokenizer.encode(chunks[0]) == tokenizer.encode(chunks[:1])  # one [T, D] chunk -> a list of one
    with pytest.raises(ValueError, match=r"\[N, 10, 4\].*\[2, 10, 5\]"):
        tokenizer.encode(np.zeros((2, 10, 5)))
    with pytest.raises(ValueError, match="NaN"):
        tokenizer.encode(np.full((1, 10, 4), np.nan))


def test_binning_round_trip_and_clipping():
    tokenizer = BinningTokenizer.fit(np.zeros((1, 10, 3)))
    assert (tokenizer.horizon, tokenizer.action_dim, tokenizer.vocab_size, tokenizer.kind) == (10, 3, 256, "binning")
    rng = np.random.default_rng(1)
    chunks = rng.uniform(-1, 1, (200, 10, 3))
    chunks[0, 0] = [-1.0, 1.0, 0.0]
    ids = tokenizer.encode(chunks)
    flat = np.asarray(ids)
    assert flat.shape == (200, 30) and flat.min() >= 0 and flat.max() < 256
    # time-major: id k of a chunk is the bin of the value at (k // D, k % D)
    np.testing.assert_array_equal(flat, np.clip(np.floor((chunks + 1) * 128), 0, 255).reshape(200, 30))
    actions, valid = tokenizer.decode(ids)
    assert valid.all() and np.abs(actions - chunks).max() <= 1 / 256 + 1e-6
    outside = np.full((1, 10, 3), 3.0)
    outside[0, :, 1] = -7.0
    actions, valid = tokenizer.decode(tokenizer.encode(outside))
    assert valid.all()
    np.testing.assert_allclose(actions[0, :, 0], 1 - 1 / 256)
    np.testing.assert_allclose(actions[0, :, 1], -1 + 1 / 256)


@pytest.mark.parametrize("kind", ["fast", "binning"])
def test_save_load_round_trip(kind, fast_10x4, tmp_path):
    tokenizer = fast_10x4[0] if kind == "fast" else BinningTokenizer(10, 4, num_bins=128, normalization="zscore")
    chunks = fast_10x4[1][:50]
    path = tmp_path / "sub" / "action_tokenizer.json"
    tokenizer.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["action_tokenizer.json"]  # no temp file left
    for loaded in (
        type(tokenizer).load(path),
        load_action_tokenizer(path),
        load_action_tokenizer(str(path), horizon=10, action_dim=4),
    ):
        assert isinstance(loaded, ActionTokenizer) and type(loaded) is type(tokenizer)
        assert loaded == tokenizer and loaded.describe() == tokenizer.describe()
        assert (loaded.vocab_size, loaded.normalization, loaded.kind) == (
            tokenizer.vocab_size,
            tokenizer.normalization,
            kind,
        )
        ids = loaded.encode(chunks)
        assert ids == tokenizer.encode(chunks)
        for got, want in zip(loaded.decode(ids), tokenizer.decode(ids)):
            np.testing.assert_array_equal(got, want)
    again = tmp_path / "again.json"
    load_action_tokenizer(path).save(again)
    assert again.read_bytes() == path.read_bytes()
    with pytest.raises(ValueError, match=r"action_tokenizer\.json.*10×4.*12×4"):
        load_action_tokenizer(path, horizon=12)
    with pytest.raises(ValueError, match=r"10×4.*10×7"):
        type(tokenizer).load(path, action_dim=7)
    other = BinningTokenizer if kind == "fast" else FASTTokenizer
    with pytest.raises(ValueError, match="load_action_tokenizer"):
        other.load(path)


def test_load_rejects_bad_files(fast_10x4, tmp_path):
    tokenizer, _ = fast_10x4
    path = tmp_path / "fast.json"
    tokenizer.save(path)
    data = json.loads(path.read_text())

    def write(name: str, content, sign: bool = True) -> str:
        """Write text as is, or a dict with a valid checksum (so that the field checks are reached)."""
        if isinstance(content, dict) and sign:
            content = {**content, "sha256": content_checksum(content)}
        target = tmp_path / name
        target.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(target)

    cases = {
        write("truncated.json", path.read_text()[: len(path.read_text()) // 2]): "not valid JSON",
        write("other.json", {"hello": 1}): "not an action tokenizer file",
        write("edited.json", {**data, "offset": data["offset"] + 1}, sign=False): "checksum does not match",
        write("version.json", {**data, "version": 99}): "version 99",
        write("kind.json", {**data, "kind": "wavelet"}): "unknown kind 'wavelet'",
        write("model.json", {**data, "sentencepiece_model": data["sentencepiece_model"][:40]}): "corrupt",
        write("base64.json", {**data, "sentencepiece_model": "@@not base64@@"}): "base64",
        write("vocab.json", {**data, "vocab_size": 7}): "vocab_size",
        write("field.json", {k: v for k, v in data.items() if k != "offset"}): "offset",
        str(tmp_path / "missing.json"): "does not exist",
    }
    for bad, message in cases.items():
        with pytest.raises(ValueError, match=message) as info:
            load_action_tokenizer(bad)
        assert bad in str(info.value)


def test_fit_is_deterministic(tmp_path):
    chunks = smooth_chunks(3, 300, 12, 5)
    first = FASTTokenizer.fit(chunks, vocab_size=600)
    second = FASTTokenizer.fit(chunks.copy(), vocab_size=600)
    first.save(tmp_path / "a.json")
    second.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert first == second and first.model_proto == second.model_proto


def test_fit_checks_its_arguments():
    chunks = smooth_chunks(4, 50, 10, 3)
    with pytest.raises(ValueError, match="vocab_size=20"):
        FASTTokenizer.fit(chunks, vocab_size=20)
    with pytest.raises(ValueError, match="normalized"):
        FASTTokenizer.fit(chunks * 1e5)
    small = FASTTokenizer.fit(chunks[:3], vocab_size=4000)  # little data: fewer pieces than asked for
    assert small.vocab_size < 4000
    ids = small.encode(chunks)
    assert max(max(row) for row in ids) < small.vocab_size and small.decode(ids)[1].all()


def test_fast_pieces_span_the_zero_runs_of_a_high_dof_chunk(monkeypatch):
    """26 dims x 30 steps: most of the 780 coefficients are high-frequency zeros; pieces longer than
    sentencepiece's default 16 coefficients take them in far fewer tokens (benchmarks/RESULTS.md)."""
    from vla_jax.tokenizers import fast as fast_lib

    fit, held_out = smooth_chunks(0, 1000, 30, 26), smooth_chunks(1, 300, 30, 26)
    tokenizer = FASTTokenizer.fit(fit, vocab_size=1024)
    longest = max(int(n) for n in tokenizer._piece_len)
    tokens = np.mean([len(row) for row in tokenizer.encode(held_out)])
    monkeypatch.setattr(fast_lib, "MAX_PIECE_LENGTH", 16)
    short = FASTTokenizer.fit(fit, vocab_size=1024)
    short_tokens = np.mean([len(row) for row in short.encode(held_out)])
    assert longest > 16 and max(int(n) for n in short._piece_len) <= 16
    assert tokens <= 0.85 * short_tokens, (tokens, short_tokens)
    decoded, valid = tokenizer.decode(tokenizer.encode(held_out))
    assert valid.all() and np.abs(decoded - held_out).max() < 0.5 / 10 * np.sqrt(30 * 26)
