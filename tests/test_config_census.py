"""A census of config settings: each bad one is refused before anything is built, as one line naming its
field; edge cases that are fine pass (some with a warning).

Every case is an override of experiments/demo.py run in process through ``vla-jax train --dry-run``; the
dry run itself is stubbed out, so nothing is built, read or trained. Settings an override cannot express
(augmentation ops, a text model file, a device count) are checked on modified configs directly.
"""

import pytest

from vla_jax import cli, validation
from vla_jax import config as config_lib
from vla_jax.data.config import DEFAULT_AUGMENT
from vla_jax.errors import ConfigError
from vla_jax.training import trainer

from .conftest import REPO

DEMO = str(REPO / "experiments" / "demo.py")
EXPERIMENTS = sorted((REPO / "experiments").glob("*.py"))

# (override of demo.py, the field its error must name; None: the override's own key)
REFUSED = [
    # Run level.
    ("num_steps=-1", None),
    ("batch_size=0", None),
    ("batch_size=-8", None),
    ("seed=-1", None),
    ("seed=4294967296", None),
    ("grad_accum_steps=0", None),
    ("grad_accum_steps=3", None),  # batch 32 does not split into 3 micro-batches
    ("ema_decay=1.0", None),
    ("ema_decay=-0.1", None),
    ("ema_decay=nan", None),
    ("max_nonfinite_skips=-1", None),
    ("log_every=0", None),
    ("eval_every=0", None),
    ("checkpoint_every=0", None),
    ("keep_checkpoints=0", None),
    ("keep_period=-1", None),
    ("device_peak_flops=-1.0", None),
    ("device_peak_flops=nan", None),
    # Closed-loop evaluation.
    ("init.source=/nonexistent/run", None),
    ("init.step=-1", None),
    ("init.load=vit/(", None),
    ("init.reinit=[", None),
    ("init.action_space_from=joints", None),
    ("init.action_space_expert=new", None),
    ("init.action_space_expert=copy", None),  # copy which expert? init.action_space_from is empty
    ("model.lora.rank=-1", None),
    ("model.lora.alpha=0", None),
    ("model.lora.targets=()", None),
    ("closed_loop.env=moon", None),
    ("closed_loop.episodes=0", None),
    ("closed_loop.num_envs=0", None),
    ("closed_loop.num_envs=65", None),
    ("closed_loop.execute_steps=-1", None),
    ("closed_loop.execute_steps=5", None),  # more than the chunk of 4
    ("closed_loop.seed=-1", None),
    ("closed_loop.decoder=beam", None),
    # Mesh and sharding.
    ("mesh.fsdp=0", None),
    ("mesh.fsdp=-3", None),
    ("mesh.data=0", None),
    ("mesh.tensor=-2", None),
    ("mesh.expert=-1", "mesh"),  # a second -1 (data is -1)
    ("mesh.fsdp=64", "batch_size"),  # 32 examples over 64 batch devices
    ("mesh.data=3", "batch_size"),
    ("sharding.fsdp_min_bytes=-1", None),
    ("sharding.max_replicated_fraction=1.5", None),
    ("sharding.max_replicated_fraction=-0.1", None),
    ("sharding.rules=(('embed', 'fdsp'),)", None),
    ("sharding.rules=(('embed', None), ('embed', 'fsdp'))", None),
    ("sharding.rules=(('embed',),)", None),
    # Data.
    ("data.mixture=vla_dem", None),
    ("data.mixture=", None),
    ("data.mixture=vla_demo:abc", None),
    ("data.mixture=vla_demo:-1", None),
    ("data.mixture=vla_demo,no_such_dataset", None),
    ("data.normalization=minmax", None),
    ("data.max_action=-1.0", None),
    ("data.max_action=nan", None),
    ("data.target_control_hz=-1.0", None),
    ("data.target_control_hz=inf", None),
    ("data.action_horizon=0", None),
    ("data.history=2", "'data.history' is 2; expected 1: the model reads only the current frame"),
    ("data.history=0", None),
    ("data.subsample_length=-1", None),
    ("data.action_dim=-1", None),
    ("data.action_dim=3", None),  # vla_demo has 4 action dims
    ("data.state_dim=-1", None),
    ("data.cameras=('primray',)", None),
    ("data.cameras=('secondary',)", None),  # a valid role that no dataset of the mixture has
    ("data.cameras=()", None),
    ("data.cameras=('primary', 'primary')", None),
    ("data.depth_cameras=('primary',)", None),  # vla_demo has no depth camera
    ("data.depth_cameras=('nose',)", None),
    ("data.image_size=0", None),
    ("data.image_size=60", None),  # not a multiple of the 16-pixel patch
    ("data.image_size=8", None),
    ("data.resize_mode=fill", None),
    ("data.image_dropout=1.5", None),
    ("data.image_dropout=1.0", None),
    ("data.image_dropout=-0.1", None),
    ("data.shuffle_buffer_size=0", None),
    ("data.shuffle_buffer_size=-1", None),
    ("data.ram_budget_gb=0.0", None),
    ("data.ram_budget_gb=nan", None),
    ("data.host_sharding=everywhere", None),
    ("data.shuffle_ram_fraction=0.0", None),
    ("data.shuffle_ram_fraction=1.5", None),
    ("data.read_threads=0", None),
    ("data.transform_threads=0", None),
    ("data.val_batches=0", None),
    ("data.val_batches=-1", None),
    # Tokenizer.
    ("tokenizer.action=bins", None),
    ("tokenizer.action_file=/no/such/fast.json", None),
    ("tokenizer.action_vocab_size=0", None),
    ("tokenizer.action_vocab_size=4", None),  # FAST's smallest alphabet has 5 characters
    ("tokenizer.fast_scale=0.0", None),
    ("tokenizer.fast_scale=-10.0", None),
    ("tokenizer.fast_scale=nan", None),
    ("tokenizer.fit_chunks=0", None),
    ("tokenizer.text_model=/no/such/text.model", None),
    ("tokenizer.text_vocab_size=0", None),
    ("tokenizer.text_vocab_size=300", None),  # < 4 specials + 256 bytes + 256 state bins + prompt characters
    ("tokenizer.state_bins=1000", None),  # 1000 bin symbols do not fit the 1024-id text model
    ("tokenizer.vocab_size=-1", None),
    ("tokenizer.vocab_size=1200", None),  # < 1024 text + 256 action ids
    ("tokenizer.reserved_tail=-1", None),
    ("tokenizer.max_length=0", None),
    ("tokenizer.max_length=4", None),  # no fast-mode prompt fits in fewer than 6 ids
    ("tokenizer.state_bins=0", None),
    ("tokenizer.state_bins=1", None),
    ("tokenizer.decode_tokens=-1", None),
    ("tokenizer.decode_tokens=2", None),
    ("tokenizer.decode_tokens=64", None),  # > max_length 48
    # Model.
    ("model.mode=diffusion", None),
    ("model.dtype=float16", None),
    ("model.remat=everything", None),
    ("model.vit.patch_size=0", None),
    ("model.vit.patch_size=12", None),  # does not divide the 64-pixel images
    ("model.vit.patch_size=128", None),
    ("model.vit.width=0", None),
    ("model.vit.depth=-1", None),
    ("model.vit.num_heads=0", None),
    ("model.vit.num_heads=3", None),  # does not divide width 64
    ("model.vit.mlp_dim=0", None),
    ("model.backbone.width=0", None),
    ("model.backbone.depth=0", None),
    ("model.backbone.num_heads=0", None),
    ("model.backbone.num_kv_heads=0", None),
    ("model.backbone.num_kv_heads=3", None),  # does not divide 4 heads
    ("model.backbone.head_dim=31", None),  # rotary needs an even head dim
    ("model.backbone.head_dim=0", None),
    ("model.backbone.mlp_dim=0", None),
    ("model.expert.width=63", None),
    ("model.expert.width=0", None),
    ("model.expert.mlp_dim=0", None),
    ("model.expert.plan=('as', 'hb')", None),  # 2 entries for 4 layers
    ("model.expert.plan=('as', 'xx', 'hb', 'as')", None),
    ("model.expert.moe.as_dispatch=sparse", None),
    ("model.expert.moe.hb_dispatch=dropless", None),
    ("model.expert.moe.as_experts=0", None),
    ("model.expert.moe.as_mlp_dim=0", None),
    ("model.expert.moe.as_capacity_factor=0.0", None),
    ("model.expert.moe.as_reg_weight=-1.0", None),
    ("model.expert.moe.as_reg_temperature=0.0", None),
    ("model.expert.moe.hb_experts=0", None),
    ("model.expert.moe.hb_mlp_dim=0", None),
    ("model.expert.moe.hb_top_k=0", None),
    ("model.expert.moe.hb_top_k=5", None),  # more than the 4 experts
    ("model.expert.moe.hb_shared_mlp_dim=-1", None),
    ("model.expert.moe.hb_capacity_factor=0.0", None),
    ("model.expert.moe.hb_capacity_factor=-1.0", None),
    ("model.expert.moe.hb_capacity_factor=nan", None),
    ("model.expert.moe.hb_balance_weight=-0.001", None),
    ("model.expert.moe.hb_z_loss_weight=nan", None),
    ("model.flow.num_steps=0", None),
    ("model.flow.loss_weight=nan", None),
    ("model.flow.loss_weight=0.0", None),
    ("model.flow.loss_weight=-1.0", None),
    ("model.flow.loss_weight=inf", None),
    # Optimizer.
    ("optimizer.schedule=linear", None),
    ("optimizer.peak_lr=nan", None),
    ("optimizer.peak_lr=-0.001", None),
    ("optimizer.peak_lr=0.0", None),
    ("optimizer.peak_lr=inf", None),
    ("optimizer.end_lr=-1e-05", None),
    ("optimizer.end_lr=nan", None),
    ("optimizer.warmup_steps=-1", None),
    ("optimizer.clip_norm=0", None),  # clip_by_global_norm(0) zeroes every update
    ("optimizer.clip_norm=-1.0", None),
    ("optimizer.clip_norm=nan", None),
    ("optimizer.b1=1.0", None),
    ("optimizer.b1=-0.1", None),
    ("optimizer.b2=1.0", None),
    ("optimizer.b2=nan", None),
    ("optimizer.weight_decay=-0.0001", None),
    ("optimizer.weight_decay=nan", None),
    ("optimizer.freeze=vit/(", None),
]

# (override of demo.py, a warning it must give; None: no warning)
ACCEPTED = [
    ("init.load=^(vit|image_proj)/", None),
    ("init.action_space_expert=share", None),
    ("optimizer.freeze=all_but_expert", None),
    ("model.lora.rank=8", None),
    ("closed_loop.env=demo", None),
    ("closed_loop.execute_steps=4", None),
    ("closed_loop.decoder=fast", None),
    ("batch_size=8", None),
    ("batch_size=1", None),
    ("seed=123", None),
    ("seed=4294967295", None),
    ("num_steps=0", "more than num_steps (0)"),  # warmup 50 never ends
    ("grad_accum_steps=2", None),
    ("grad_accum_steps=32", None),
    ("ema_decay=0.999", None),
    ("max_nonfinite_skips=3", None),
    ("log_every=1", None),
    ("keep_checkpoints=1", None),
    ("keep_period=1000", None),
    ("device_peak_flops=1e+15", None),
    ("mesh.fsdp=2", None),
    ("mesh.data=4", None),
    ("sharding.rules=(('batch', ('data', 'fsdp')), ('mlp', 'tensor'), ('embed', None))", None),
    ("sharding.max_replicated_fraction=0.0", None),
    ("data.mixture=vla_demo:2", None),
    ("data.normalization=zscore", None),
    ("data.target_control_hz=5.0", None),
    ("data.action_horizon=10", None),
    ("data.history=1", None),
    ("data.goal_relabeling=True", None),
    ("data.action_dim=24", None),
    ("data.cameras=('wrist', 'primary')", None),
    ("data.image_size=128", None),
    ("data.resize_mode=crop", None),
    ("data.image_dropout=0.0", None),
    ("data.image_dropout=0.5", None),
    ("data.host_sharding=replicated", None),
    ("data.shuffle_buffer_size=1", None),
    ("tokenizer.action=binning", None),  # 256 action ids hold the 256 bins
    ("tokenizer.text_vocab_size=2048", None),
    ("model.backbone.depth=1", None),  # one layer: its expert plan is a single AS block
    ("tokenizer.vocab_size=2048", None),
    ("tokenizer.vocab_size=1280", None),  # exactly text + action ids
    ("tokenizer.state_bins=2", None),
    ("tokenizer.decode_tokens=0", None),
    ("tokenizer.decode_tokens=48", None),  # = max_length
    ("model.dtype=bfloat16", None),
    ("model.mode=fast", None),
    ("model.mode=flow", None),
    ("model.remat=dots", None),
    ("model.vit.depth=0", None),
    ("model.backbone.num_kv_heads=4", None),
    ("model.expert.plan=('as', 'hb', 'hb', 'as')", None),
    ("model.expert.moe.hb_top_k=4", None),  # = the number of experts
    ("model.expert.moe.hb_shared_mlp_dim=0", None),
    ("model.expert.moe.hb_dispatch=dense", None),
    ("model.flow.num_steps=1", None),
    ("optimizer.schedule=rsqrt", None),
    ("optimizer.warmup_steps=0", None),
    ("optimizer.clip_norm=inf", None),  # no clipping
    ("optimizer.b1=0.0", None),
    ("optimizer.freeze=^vit/", None),
    ("optimizer.warmup_steps=5000", "optimizer.warmup_steps' is 5000, more than num_steps (3000)"),
    ("optimizer.end_lr=0.01", "optimizer.end_lr' is 0.01, above peak_lr"),
]


@pytest.fixture
def no_dry_run(monkeypatch):
    """The dry run replaced by a stub: a case that passes validation builds nothing."""
    monkeypatch.setattr(trainer, "dry_run", lambda config: {"validated": True})
    monkeypatch.setattr(trainer, "format_dry_run", lambda result: "validated")


def _dry_run(capsys, override: str) -> tuple[int, list[str]]:
    code = cli.main(["train", "--config", DEMO, "--dry-run", f"--config.{override}"])
    return code, capsys.readouterr().err.splitlines()


def _demo(*overrides: str):
    config = config_lib.load_config(DEMO, list(overrides))
    config.unlock()
    return config


def _assert_one_error_line(code: int, lines: list[str], field: str) -> None:
    assert code == 2 and len(lines) == 1, (code, lines)
    assert lines[0].startswith("vla-jax: error:") and field in lines[0], lines[0]


def _assert_warnings(warnings: list[str], expected: str | None) -> None:
    """No warning, or exactly one that contains ``expected``."""
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and expected in warnings[0], warnings


def test_the_census_is_big_enough():
    assert len(REFUSED) + len(ACCEPTED) >= 110
    assert len({o for o, _ in REFUSED + ACCEPTED}) == len(REFUSED + ACCEPTED)
    groups = {o.split("=")[0].split(".")[0] for o, _ in REFUSED if "." in o.split("=")[0]}
    assert groups == {"init", "closed_loop", "mesh", "sharding", "data", "tokenizer", "model", "optimizer"}


@pytest.mark.parametrize("override, field", REFUSED, ids=[o for o, _ in REFUSED])
def test_refused(override, field, capsys, no_dry_run):
    code, lines = _dry_run(capsys, override)
    _assert_one_error_line(code, lines, field or override.partition("=")[0])


@pytest.mark.parametrize("override, warning", ACCEPTED, ids=[o for o, _ in ACCEPTED])
def test_accepted(override, warning, capsys, no_dry_run):
    warnings = validation.validate_config(config_lib.load_config(DEMO, [override]))
    _assert_warnings(warnings, warning)
    code, lines = _dry_run(capsys, override)
    assert code == 0 and lines == [f"vla-jax: warning: {w}" for w in warnings], lines


AUGMENT_REFUSED = [
    ({"secondary": {"hue": 0.05}}, "no dataset of mixture 'vla_demo' has a 'secondary' camera"),
    ({"primray": {"hue": 0.05}}, "'primray'"),
    ({"primary": {"blur": 1.0}}, "'data.augment.primary' has an unknown op 'blur'"),
    ({"primary": {"crop_scale": (0.8, 1.2)}}, "'data.augment.primary.crop_scale'"),
    ({"primary": {"crop_scale": (0.0, 1.0)}}, "'data.augment.primary.crop_scale'"),
    ({"primary": {"crop_scale": (0.9, 0.8)}}, "'data.augment.primary.crop_scale'"),
    ({"primary": {"crop_scale": 0.8}}, "'data.augment.primary.crop_scale'"),
    ({"primary": {"crop_scale": (0.8, 1.0), "crop_ratio": (0.0, 1.0)}}, "'data.augment.primary.crop_ratio'"),
    ({"primary": {"hue": 0.9}}, "'data.augment.primary.hue' is 0.9"),
    ({"primary": {"hue": -0.1}}, "'data.augment.primary.hue'"),
    ({"wrist": {"hue": float("nan")}}, "'data.augment.wrist.hue'"),
    ({"primary": {"brightness": -0.1}}, "'data.augment.primary.brightness'"),
    ({"primary": {"contrast": (1.0, 1.0)}}, "'data.augment.primary.contrast'"),  # tf needs lo < hi
    ({"primary": {"contrast": (-0.5, 1.0)}}, "'data.augment.primary.contrast'"),
    ({"wrist": {"saturation": (1.2, 0.8)}}, "'data.augment.wrist.saturation'"),
    ({"primary": 0.5}, "'data.augment.primary' is 0.5"),
]


@pytest.mark.parametrize("augment, text", AUGMENT_REFUSED, ids=[str(a) for a, _ in AUGMENT_REFUSED])
def test_refused_augmentation(augment, text):
    config = _demo()
    config.data.augment = augment
    with pytest.raises(ConfigError) as error:
        validation.validate_config(config)
    assert "\n" not in str(error.value) and text in str(error.value), error.value


@pytest.mark.parametrize(
    "cameras, augment, warning",
    [
        (("primary", "wrist"), DEFAULT_AUGMENT, None),
        (("primary", "wrist"), {"primary": {"hue": 0.0, "brightness": 0, "crop_scale": ()}}, None),  # all off
        (("primary", "wrist"), {"primary": {"hue": 0.5, "contrast": (0.0, 2.0)}}, None),
        (("primary",), DEFAULT_AUGMENT, "augments the 'wrist' camera, which is not in data.cameras"),
        (("primary", "wrist"), {"primary": {"crop_ratio": (0.9, 1.1)}}, "has no effect without crop_scale"),
    ],
)
def test_accepted_augmentation(cameras, augment, warning):
    config = _demo(f"data.cameras={cameras!r}")
    config.data.augment = augment
    _assert_warnings(validation.validate_config(config), warning)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (("tokenizer.action=binning", "tokenizer.action_vocab_size=128"), "tokenizer.action_vocab_size"),
        (("tokenizer.action=binning", "data.action_horizon=20"), "tokenizer.max_length"),  # 80 action ids
        (("model.mode=flow", "tokenizer.max_length=1"), "tokenizer.max_length"),
        (("model.mode=flow", "model.flow.knowledge_insulation=True"), "model.flow.knowledge_insulation"),
        (("model.mode=flow", "tokenizer.vocab_size=1000"), "tokenizer.vocab_size"),
        (("tokenizer.text_vocab_size=2000", "tokenizer.vocab_size=2100"), "tokenizer.vocab_size"),
        (("optimizer.freeze=all_but_lora",), "optimizer.freeze"),
    ],
)
def test_refused_combinations(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as error:
        validation.validate_config(_demo(*overrides))
    assert "\n" not in str(error.value)


def test_flow_mode_reserves_no_action_ids():
    assert validation.validate_config(_demo("model.mode=flow", "tokenizer.vocab_size=1024")) == []
    assert validation.validate_config(_demo("model.mode=flow", "tokenizer.action_vocab_size=1")) == []


def test_a_given_text_model_must_fit_the_vocabulary(tmp_path):
    from vla_jax.tokenizers import build, text

    bins = [str(b) for b in range(256)]
    model = text.train_text_model(build.text_corpus(["pick up the block"], 256), 1024, symbols=bins)
    path = tmp_path / "text.model"
    model.save(path)
    with pytest.raises(
        ConfigError, match=rf"'tokenizer.vocab_size' is 100; expected 0 or an int >= {model.vocab_size}"
    ):
        validation.validate_config(_demo(f"tokenizer.text_model={path}", "tokenizer.vocab_size=100"))
    # A vocabulary as big as the text model: action ids take its tail (as with PaliGemma's).
    config = _demo(f"tokenizer.text_model={path}", f"tokenizer.vocab_size={model.vocab_size}")
    assert validation.validate_config(config) == []
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="'tokenizer.text_model'.*sentencepiece"):
        validation.validate_config(_demo(f"tokenizer.text_model={tmp_path / 'junk.model'}"))


@pytest.mark.parametrize(
    "path, devices, field",
    [
        ("demo.py", 3, "'batch_size' is 32; expected a multiple of 3"),
        ("demo.py", 7, "'batch_size' is 32; expected a multiple of 7"),
        ("pretrain_oxe_magic_soup.py", 8, "'mesh'"),  # fsdp=64 needs 64 devices
        ("pretrain_small.py", 16, "'mesh'"),  # data=8 needs 8
    ],
)
def test_device_count_must_fit_the_mesh_and_batch(path, devices, field):
    config = _demo() if path == "demo.py" else config_lib.load_config(str(REPO / "experiments" / path))
    with pytest.raises(ConfigError, match=field):
        validation.validate_config(config, device_count=devices)


def test_micro_batches_that_do_not_split_over_the_devices_are_a_warning():
    config = _demo("grad_accum_steps=8")  # micro-batches of 4 examples on 8 devices
    assert validation.validate_config(config) == []  # the mesh is abstract: the data axis is unknown
    (warning,) = validation.validate_config(config, device_count=8)
    assert "micro-batches of 4 examples" in warning and "8 devices" in warning
    assert validation.validate_config(_demo("grad_accum_steps=4"), device_count=8) == []


def test_unknown_and_missing_fields():
    config = _demo()
    config.data.shufle_buffer_size = 10
    assert validation.validate_config(config) == [
        "config key 'data.shufle_buffer_size' is not a known option; it was not checked "
        "(vla_jax.validation has no rule for it)"
    ]
    config = _demo()
    del config.optimizer["b2"]
    with pytest.raises(ConfigError, match=r"'optimizer.b2' is missing.*optimizer_config"):
        validation.validate_config(config)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_config_validates(path):
    config = config_lib.load_config(str(path))
    if config.init.source:  # a fine-tune's source is a run of yours (the rule is in the census): here, none
        config.init.source = ""
    assert validation.validate_config(config) == []
    devices = {"data": 1, "fsdp": 1, "tensor": 1, "expert": 1} | dict(config.mesh)
    count = 8 if -1 in devices.values() else devices["data"] * devices["fsdp"] * devices["tensor"] * devices["expert"]
    assert validation.validate_config(config, device_count=count) == []


@pytest.mark.parametrize("mesh", ["fsdp=0", "fsdp=-3", "fdsp=2", "data=-1,fsdp=-1"])
def test_model_summary_refuses_a_bad_mesh(mesh, capsys):
    code = cli.main(["model", "summary", "--preset", "tiny", "--mesh", mesh])
    _assert_one_error_line(code, capsys.readouterr().err.splitlines(), "--mesh")


def test_summary_and_tokenizer_commands_validate_the_config(capsys, tmp_path):
    code = cli.main(["model", "summary", "--config", DEMO, "--config.optimizer.b1=1.0"])
    _assert_one_error_line(code, capsys.readouterr().err.splitlines(), "optimizer.b1")
    out = str(tmp_path / "fast.json")
    code = cli.main(["tokenizer", "fit", "--config", DEMO, "--config.tokenizer.state_bins=0", "--out", out])
    _assert_one_error_line(code, capsys.readouterr().err.splitlines(), "tokenizer.state_bins")


def test_training_checks_the_mesh_against_the_devices(capsys, monkeypatch, tmp_path):
    from vla_jax import distributed

    monkeypatch.setattr(distributed, "initialize_from_env", lambda: "single")
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("validation let a bad mesh through"))
    workdir = str(tmp_path / "w")
    code = cli.main(["train", "--config", DEMO, "--workdir", workdir, "--config.mesh.fsdp=3"])  # 8 test devices
    _assert_one_error_line(code, capsys.readouterr().err.splitlines(), "config key 'mesh'")


def test_a_real_dry_run_prints_the_warning(capsys):
    """No dataset needed: with both widths set the dry run builds shapes alone."""
    args = ["train", "--config", DEMO, "--dry-run", "--json", "--config.optimizer.warmup_steps=5000"]
    assert cli.main([*args, "--config.data.action_dim=4", "--config.data.state_dim=4"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("vla-jax:")]
    assert len(warnings) == 1 and warnings[0].startswith("vla-jax: warning: config key 'optimizer.warmup_steps'")
    assert '"params_total"' in captured.out
