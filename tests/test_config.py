import pytest

from vla_jax import config as config_lib
from vla_jax.errors import ConfigError

from .conftest import REPO, debug_config

DEMO = str(REPO / "experiments" / "demo.py")


def test_overrides_are_parsed_by_field_type():
    config = config_lib.load_config(
        DEMO,
        ["num_steps=7", "optimizer.peak_lr=0.5", "data.cameras=('primary',)", "model.dtype=bfloat16"],
    )
    assert config.num_steps == 7 and isinstance(config.num_steps, int)
    assert config.optimizer.peak_lr == 0.5
    assert config.data.cameras == ("primary",)
    assert config.model.dtype == "bfloat16"


def test_unknown_key_names_key_and_suggests_close_match():
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer.peak_l'.*'optimizer.peak_lr'"):
        config_lib.load_config(DEMO, ["optimizer.peak_l=1.0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'.*'model'"):
        config_lib.load_config(DEMO, ["modle.width=3"])


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"'num_steps' expects a int, got 'ten'"):
        config_lib.load_config(DEMO, ["num_steps=ten"])
    with pytest.raises(ConfigError, match=r"'data.cameras' expects a tuple"):
        config_lib.load_config(DEMO, ["data.cameras=3"])


def test_config_is_locked_after_loading():
    config = config_lib.load_config(DEMO)
    with pytest.raises(AttributeError):
        config.brand_new_field = 1
    config.num_steps = 3  # existing fields stay writable
    assert config.num_steps == 3


def test_file_arg_and_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        config_lib.load_config("experiments/nope.py")
    assert debug_config().model.backbone.width < config_lib.load_config(DEMO).model.backbone.width


def test_required_top_level_fields(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(
        "import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict({'num_steps': 1, 'seed': 0})\n"
    )
    with pytest.raises(ConfigError, match="batch_size"):
        config_lib.load_config(str(path))


def test_every_experiment_has_the_contract_fields():
    for path in sorted((REPO / "experiments").glob("*.py")):
        config = config_lib.load_config(str(path))
        for key in ("num_steps", "batch_size", "seed"):
            assert isinstance(config[key], int), (path.name, key)
