"""Importing released weights (vla_jax.convert): parity with independent implementations on tiny random weights.

PaliGemma: a Hugging Face model saved by ``transformers`` (CPU torch) is converted and must give the logits
``transformers`` gives; the same weights in big_vision's ``.npz`` layout convert to bit-identical parameters.
openpi π0: a tree in openpi's layout, written with Orbax, converted; the flow velocity must match a NumPy
forward written from openpi's architecture (``tests/pi0_reference.py``), for a dense expert and for our HiMoE
expert upcycled from it.
"""

import json
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from tests import hf_paligemma, pi0_reference
from vla_jax import cli
from vla_jax.convert import commands, paligemma
from vla_jax.convert.weights import REPORT_FILE
from vla_jax.errors import CheckpointError, ConvertError
from vla_jax.inference import bundle
from vla_jax.inference.policy import Policy
from vla_jax.models.vla import build_model
from vla_jax.observation import IOShapes, Observation
from vla_jax.tokenizers import build
from vla_jax.tokenizers.text import train_text_model
from vla_jax.training import checkpoint
from vla_jax.training import init as init_lib
from vla_jax.training.optimizer import param_path

TOLERANCE = 1e-4


def _observation(io: IOShapes, images: dict, image_masks: dict, tokens, token_mask, ar_mask, state) -> Observation:
    b = tokens.shape[0]
    return Observation(
        images={k: jax.numpy.asarray(v) for k, v in images.items()},
        image_masks={k: jax.numpy.asarray(v) for k, v in image_masks.items()},
        state=jax.numpy.asarray(state, jax.numpy.float32),
        state_mask=jax.numpy.ones((b, io.state_dim), bool),
        prompt_tokens=jax.numpy.asarray(tokens, jax.numpy.int32),
        prompt_mask=jax.numpy.asarray(token_mask),
        prompt_ar_mask=jax.numpy.asarray(ar_mask),
        action_dim_mask=jax.numpy.ones((b, io.action_dim), bool),
        action_space=jax.numpy.zeros((b,), jax.numpy.int32),
    )


def _model(out: pathlib.Path, io: IOShapes | None = None, **moe):
    """The converted model (optionally with other inputs or MoE settings; the parameters do not depend on them)."""
    parts = bundle.load(out)
    config = parts.config
    config.model.expert.moe.update(moe)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(config.model, io or parts.io, 0)))
    return nnx.merge(graphdef, parts.params), parts


def _flat(out: pathlib.Path) -> dict[str, np.ndarray]:
    params = bundle.load(out).params
    return {param_path(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> pathlib.Path:
    return hf_paligemma.save_random_paligemma(tmp_path_factory.mktemp("hf") / "paligemma")


def test_hugging_face_paligemma_gives_transformers_logits_and_npz_is_bit_identical(hf_dir, tmp_path):
    out = tmp_path / "from_hf"
    summary = commands.convert("paligemma_hf", hf_dir, out, preset="tiny")
    report = json.loads((out / REPORT_FILE).read_text())
    assert all(not fate.startswith("unused") for fate in report["source_tensors"].values()), report["source_tensors"]
    assert "dropped" in report["source_tensors"]["language_model.model.embed_tokens.weight"]
    rng = np.random.default_rng(0)
    b, t, size = 2, 9, hf_paligemma.IMAGE_SIZE
    image = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
    tokens = rng.integers(3, hf_paligemma.IMAGE_TOKEN_ID, (b, t))
    tokens[:, 0] = hf_paligemma.BOS_ID
    suffix = np.arange(t)[None, :] >= np.array([[5], [7]])  # a prefix-LM split per row
    logits_hf = hf_paligemma.reference_logits(
        hf_dir, image.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0, tokens, suffix.astype(np.int64),
        np.ones((b, t), np.int64),
    )[:, hf_paligemma.N_IMG :]  # fmt: skip
    io = IOShapes(("primary",), size, hf_paligemma.IMAGE_TOKEN_ID, t, 4, 4, 2)
    model, _ = _model(out, io)
    obs = _observation(
        io, {"primary": image}, {"primary": np.ones(b, bool)}, tokens, np.ones((b, t), bool), suffix, np.zeros((b, 4))
    )
    ours = np.asarray(model.prompt_logits(obs, obs.prompt_tokens, obs.prompt_mask, obs.prompt_ar_mask))
    # transformers' vocabulary has the <image> token last; ours (big_vision's) ends below it
    assert ours.shape[-1] == hf_paligemma.IMAGE_TOKEN_ID == logits_hf.shape[-1] - 1
    logits_hf = logits_hf[..., : ours.shape[-1]]
    assert np.abs(ours - logits_hf).max() <= TOLERANCE, np.abs(ours - logits_hf).max()
    assert np.abs(logits_hf).max() > 0.1  # not trivially small

    # The same weights in big_vision's layout: the same parameters, bit for bit.
    npz = hf_paligemma.write_big_vision_npz(hf_dir, tmp_path / "pt.npz")
    commands.convert("paligemma_npz", npz, tmp_path / "from_npz", preset="tiny")
    a, c = _flat(out), _flat(tmp_path / "from_npz")
    assert set(a) == set(c)
    for path in a:
        np.testing.assert_array_equal(a[path], c[path], err_msg=path)
    # Every parameter is converted (the tiny preset in "fast" mode has no expert): the source's count exactly.
    assert report["counts"] == {"converted": len(a)}
    assert summary["num_params"] == report["source_num_params"] == sum(v.size for v in a.values())

    # π0-FAST: the same PaliGemma tree under openpi's PaliGemma/ prefix, with its downward FAST ids.
    with np.load(npz) as data:
        tree = {"PaliGemma/" + k.removeprefix("params/"): data[k] for k in data.files}
    fast = tmp_path / "pi0_fast"
    commands.convert("openpi", _write_openpi(tmp_path / "openpi_fast", tree), fast)
    parts = bundle.load(fast)
    assert parts.config.model.mode == "fast" and parts.config.tokenizer.action_id_order == "down"
    assert parts.config.tokenizer.reserved_tail == 128
    d = _flat(fast)
    assert set(d) == set(a) and all(np.array_equal(d[path], a[path]) for path in a)


def _write_openpi(root: pathlib.Path, params: dict[str, np.ndarray], norm_stats: dict | None = None) -> pathlib.Path:
    """An openpi checkpoint directory as openpi saves one: Orbax ``params/`` with a ``params`` item, and assets."""
    tree: dict = {}
    for name, value in params.items():
        node = tree
        *groups, leaf = name.split("/")
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = {"value": value}  # saved from an nnx.State: a trailing "value" key
    ocp.PyTreeCheckpointer().save(root / "params", {"params": tree})
    if norm_stats is not None:
        (root / "assets" / "trossen").mkdir(parents=True)
        (root / "assets" / "trossen" / "norm_stats.json").write_text(json.dumps({"norm_stats": norm_stats}))
    return root


def _pi0_inputs(dims, io: IOShapes, seed: int = 1):
    rng = np.random.default_rng(seed)
    b, cams = 2, len(io.cameras)
    images = rng.integers(0, 256, (b, cams, dims.image_size, dims.image_size, 3), dtype=np.uint8)
    image_masks = np.array([[True, True, False], [True, False, True]])[:, :cams]
    tokens = rng.integers(0, dims.vocab, (b, io.text_length))
    token_mask = np.arange(io.text_length)[None, :] < np.array([[5], [11]])
    state = rng.standard_normal((b, dims.action_dim)).astype(np.float32)
    noisy = rng.standard_normal((b, io.action_horizon, dims.action_dim)).astype(np.float32)
    time = np.array([0.3, 0.85], np.float32)
    return images, image_masks, tokens, token_mask, state, noisy, time


def _velocity(model, io: IOShapes, images, image_masks, tokens, token_mask, state, noisy, time) -> np.ndarray:
    obs = _observation(
        io, {c: images[:, i] for i, c in enumerate(io.cameras)}, {c: image_masks[:, i] for i, c in enumerate(io.cameras)},
        tokens, token_mask, np.zeros_like(token_mask), state,
    )  # fmt: skip
    _, kvs, prefix, length = model._prefix_context(obs)
    velocity, _ = model.action_expert(
        jax.numpy.asarray(noisy), jax.numpy.asarray(time), kvs, prefix, length, model._routing(obs), obs.state
    )
    return np.asarray(velocity)


NORM_STATS = {
    k: {"mean": [0.1] * 6, "std": [1.0] * 6, "q01": [-1.5] * 6, "q99": [2.0] * 6} for k in ("state", "actions")
}


def test_openpi_pi0_gives_the_reference_velocity_with_its_norm_stats(tmp_path, capsys):
    dims = pi0_reference.Pi0Dims(horizon=5)
    params = pi0_reference.openpi_params(dims, seed=0)
    source = _write_openpi(tmp_path / "pi0", params, NORM_STATS)
    out = tmp_path / "converted"
    assert cli.main(["convert", "openpi", str(source), "--out", str(out), "--horizon", "5"]) == 0
    model, parts = _model(out)
    assert parts.config.model.mode == "flow" and parts.io.action_dim == dims.action_dim
    inputs = _pi0_inputs(dims, parts.io)
    want = pi0_reference.pi0_velocity(params, dims, *inputs)
    got = _velocity(model, parts.io, *inputs)
    assert np.abs(got - want).max() <= TOLERANCE, np.abs(got - want).max()
    assert np.abs(want).std() > 0.05
    report = json.loads((out / REPORT_FILE).read_text())
    assert set(report["source_tensors"]) == set(params)
    assert not [k for k, v in report["source_tensors"].items() if v.startswith("unused")]
    assert report["counts"] == {"converted": len(_flat(out))}  # nothing fresh: π0's model, whole
    assert report["source_num_params"] == sum(v.size for v in params.values()) == parts.num_params
    capsys.readouterr()
    assert cli.main(["model", "summary", "--release", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["params_total"] == report["source_num_params"]  # vla-jax model summary: the source's count
    stats = parts.statistics["trossen"]
    np.testing.assert_allclose(stats.action.q99, 2.0)
    np.testing.assert_allclose(stats.state.mean, 0.1)


def test_openpi_pi0_upcycled_into_himoe_computes_what_pi0_computes(tmp_path):
    dims = pi0_reference.Pi0Dims(llm_depth=4, horizon=5)  # plan as, hb, hb, as
    params = pi0_reference.openpi_params(dims, seed=3)
    out = tmp_path / "himoe"
    commands.convert("openpi", _write_openpi(tmp_path / "pi0", params), out, preset="paligemma_himoe", horizon=5)
    report = json.loads((out / REPORT_FILE).read_text())
    statuses = report["parameters"]
    assert statuses["action_expert/decoder/layers/0/ffn/router"].startswith("zeros")
    assert statuses["action_expert/decoder/layers/1/ffn/experts/gate"].startswith("upcycled")
    assert statuses["action_expert/decoder/layers/1/ffn/shared/down"].startswith("zeros")
    new = [p for p, s in statuses.items() if s.startswith("new")]
    assert new and all("/shared/" in p for p in new), new  # the shared expert's gate and up start fresh
    model, parts = _model(out, hb_dispatch="ragged")  # nothing dropped
    assert parts.config.model.expert.moe.activation == "gelu"
    inputs = _pi0_inputs(dims, parts.io, seed=4)
    want = pi0_reference.pi0_velocity(params, dims, *inputs)
    got = _velocity(model, parts.io, *inputs)
    assert np.abs(got - want).max() <= TOLERANCE, np.abs(got - want).max()


def test_bad_sources_are_one_line_errors_and_leave_no_output(tmp_path, hf_dir, capsys):
    npz = hf_paligemma.write_big_vision_npz(hf_dir, tmp_path / "pt.npz")
    with np.load(npz) as data:
        tensors = dict(data)
    missing = tmp_path / "missing.npz"
    np.savez(missing, **{k: v for k, v in tensors.items() if "MlpBlock_0/Dense_1/bias" not in k})
    wrong = tmp_path / "wrong.npz"
    key = "params/llm/layers/mlp/linear"
    np.savez(wrong, **dict(tensors, **{key: tensors[key][:, :-1]}))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "weights.bin").write_bytes(b"\0" * 64)
    cases = [
        ("paligemma_npz", missing, "img/Transformer/encoderblock/MlpBlock_0/Dense_1/bias' is missing"),
        ("paligemma_npz", wrong, "llm/layers/mlp/linear' has shape"),
        ("paligemma_hf", tmp_path / "foreign", "not a Hugging Face checkpoint"),
        ("openpi", tmp_path / "foreign", "not an openpi checkpoint"),
        ("paligemma_npz", tmp_path / "foreign" / "weights.bin", "not a readable .npz"),
    ]
    for kind, source, text in cases:
        out = tmp_path / f"out_{kind}_{source.name}"
        assert cli.main(["convert", kind, str(source), "--out", str(out)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (kind, lines)
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}*"))
    with pytest.raises(ConvertError, match="unknown kind"):
        commands.convert("llama", npz, tmp_path / "x")
    gemma2 = tmp_path / "gemma2"
    shutil.copytree(hf_dir, gemma2)
    config = json.loads((gemma2 / "config.json").read_text())
    config["text_config"]["model_type"] = "gemma2"  # PaliGemma 2: post-norms the mapping has no place for
    (gemma2 / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertError, match="text_config.model_type is 'gemma2'"):
        commands.convert("paligemma_hf", gemma2, tmp_path / "y")


def test_bfloat16_safetensors_read_exactly(tmp_path):
    import torch
    from safetensors.torch import save_file

    values = torch.randn(3, 5, dtype=torch.float32).to(torch.bfloat16)
    save_file({"w": values, "b": torch.arange(4, dtype=torch.float16)}, str(tmp_path / "model.safetensors"))
    tensors = paligemma.read_safetensors(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(tensors["w"], values.to(torch.float32).numpy())
    np.testing.assert_array_equal(tensors["b"], np.arange(4, dtype=np.float32))
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ConvertError, match="not a readable safetensors file"):
        paligemma.read_safetensors(tmp_path / "bad.safetensors")


def test_a_converted_directory_is_a_release_that_init_source_reads_with_its_text_model(tmp_path):
    dims = pi0_reference.Pi0Dims(horizon=5)
    text = train_text_model([f"pick up the {c} block" for c in ("red", "blue", "green")] * 20, 290, ("<image>",))
    text.save(tmp_path / "tokenizer.model")
    assert (text.pad_id, text.eos_id, text.bos_id, text.unk_id) == (0, 1, 2, 3)  # Gemma's special ids
    out = tmp_path / "converted"
    source_dir = _write_openpi(tmp_path / "pi0", pi0_reference.openpi_params(dims))
    commands.convert("openpi", source_dir, out, horizon=5, tokenizer=tmp_path / "tokenizer.model")
    source = init_lib.open_source(out)  # verifies every file's sha256
    assert source.item == "converted:openpi" and source.io.action_horizon == 5
    assert source.tokenizers == {build.TEXT_FILE: text.model_proto}
    leaves = {name for name, *_ in checkpoint.array_leaves(init_lib.source_tree(source))}
    assert leaves == set(_flat(out))
    with pytest.raises(CheckpointError, match="no robot .* fine-tune them on your robot's data"):
        Policy.load(out)  # weights, not yet a policy: one clear line
    big = train_text_model([f"sentence number {i} of many words" for i in range(300)], 600)
    assert big.vocab_size > dims.vocab
    big.save(tmp_path / "big.model")
    with pytest.raises(ConvertError, match=r"--tokenizer .* has \d+ ids; the source's embedding has 300 rows"):
        commands.convert("openpi", source_dir, tmp_path / "again", tokenizer=tmp_path / "big.model")
    assert not (tmp_path / "again").exists()
