"""Spec and mixture registry: discovery in the package, from $VLA_JAX_SPECS, and from a wheel."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from vla_jax.data import specs
from vla_jax.errors import DataError

from .conftest import REPO

SPEC_FILE = """
from vla_jax.data.specs import DatasetSpec, Mixture, register, register_mixture

register(DatasetSpec(
    name="lab_arm_{suffix}", action_space="joint_position",
    action_dims=tuple(f"j{{i}}" for i in range(7)) + ("gripper",),
    normalize_action=(True,) * 7 + (False,), control_frequency_hz=20.0,
    cameras={{"primary": "front"}},
))
register_mixture(Mixture("lab_mix_{suffix}", (("lab_arm_{suffix}", 1.0), ("vla_demo", 0.5))))
"""


def test_package_specs_are_discovered_without_a_central_list():
    names = specs.all_specs()
    assert "vla_demo" in names and "fractal20220817_data" in names and len(names) >= 55
    assert "oxe_magic_soup" in specs.all_mixtures()


def test_spec_files_from_the_environment(tmp_path, monkeypatch):
    spec_dir = tmp_path / "my_specs"
    spec_dir.mkdir()
    (spec_dir / "lab_arm.py").write_text(SPEC_FILE.format(suffix="env"))
    monkeypatch.setenv(specs.SPEC_PATH_ENV, str(spec_dir))
    spec = specs.get_spec("lab_arm_env")
    assert spec.action_dim == 8 and spec.gripper_dims == (7,) and spec.action_space_id == 2
    mixture = specs.resolve_mixture("lab_mix_env")
    assert mixture.weights == (("lab_arm_env", 1.0), ("vla_demo", 0.5))
    monkeypatch.setenv(specs.SPEC_PATH_ENV, str(tmp_path / "missing"))
    with pytest.raises(DataError, match="neither a .py file nor a directory"):
        specs.discover()


def test_mixture_strings_and_unknown_names():
    mixture = specs.resolve_mixture("vla_demo:2,fractal20220817_data")
    assert mixture.weights == (("vla_demo", 2.0), ("fractal20220817_data", 1.0))
    with pytest.raises(DataError, match="did you mean 'vla_demo'"):
        specs.resolve_mixture("vla_dem")
    with pytest.raises(DataError, match="weight 'x' of 'vla_demo' is not a number"):
        specs.resolve_mixture("vla_demo:x")
    with pytest.raises(DataError, match="lists a dataset twice"):
        specs.Mixture("twice", (("a", 1.0), ("a", 2.0)))


def test_spec_validation_names_the_field():
    base = dict(name="bad", action_space="eef_delta", action_dims=("x", "gripper"), control_frequency_hz=5.0)
    with pytest.raises(DataError, match="'bad': normalize_action has 1 entries for 2 action dims"):
        specs.DatasetSpec(**base, normalize_action=(True,))
    with pytest.raises(DataError, match="action_space 'eef' is not one of"):
        specs.DatasetSpec(**{**base, "action_space": "eef"}, normalize_action=(True, False))
    with pytest.raises(DataError, match="cameras has unknown roles \\['top'\\]"):
        specs.DatasetSpec(**base, normalize_action=(True, False), cameras={"top": "image"})
    with pytest.raises(DataError, match="control_frequency_hz must be > 0"):
        specs.DatasetSpec(**{**base, "control_frequency_hz": 0.0}, normalize_action=(True, False))
    good = specs.DatasetSpec(**base, normalize_action=(True, False))
    specs.register(good)
    with pytest.raises(DataError, match="registered twice with different contents"):
        specs.register(specs.DatasetSpec(**{**base, "control_frequency_hz": 6.0}, normalize_action=(True, False)))


def test_specs_are_found_from_an_installed_wheel(tmp_path):
    """Discovery walks the installed package, so specs work from a wheel, not just the source tree."""
    source = tmp_path / "src"
    shutil.copytree(
        REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "workdirs", "*.egg-info", "__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "wheel")],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("vla_jax-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import json, vla_jax; from vla_jax.data import specs; "
        "print(json.dumps([vla_jax.__file__, len(specs.all_specs()), 'oxe_magic_soup' in specs.all_mixtures()]))"
    )
    env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    location, count, has_soup = json.loads(out.stdout.strip().splitlines()[-1])
    assert location.startswith(str(site)) and count >= 55 and has_soup
