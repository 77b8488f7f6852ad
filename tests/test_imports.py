"""The import rule of docs/ARCHITECTURE.md: no module imports from a stage later in the data flow."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "vla_jax"

# Stage of each top-level module or package, in the order of the data flow. A module may import from its own
# stage and from the stages listed in ALLOWED; models read only the typed observation, never the data pipeline.
STAGES = {
    "__init__": "core",
    "errors": "core",
    "files": "core",
    "config": "core",
    "observation": "core",
    "sharding": "core",
    "distributed": "core",
    "envs": "envs",
    "tokenizers": "tokenizers",
    "data": "data",
    "models": "models",
    "training": "training",
    "validation": "training",
    "convert": "convert",
    "inference": "inference",
    "evaluation": "evaluation",
    "cli": "commands",
}
ALLOWED = {
    "core": {"core"},
    "envs": {"core", "envs"},
    "tokenizers": {"core", "tokenizers"},
    "data": {"core", "envs", "tokenizers", "data"},
    "models": {"core", "models"},
    "training": {"core", "envs", "tokenizers", "data", "models", "training"},
    "convert": {"core", "tokenizers", "data", "models", "training", "convert"},
    "inference": {"core", "envs", "tokenizers", "data", "models", "training", "inference"},
    "evaluation": {"core", "envs", "tokenizers", "data", "models", "training", "inference", "evaluation"},
    "commands": {
        "core",
        "envs",
        "tokenizers",
        "data",
        "models",
        "training",
        "convert",
        "inference",
        "evaluation",
        "commands",
    },
}


def _stage(module_path: pathlib.Path) -> str:
    top = module_path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    return STAGES[top]


def _imported_stages(module_path: pathlib.Path) -> list[tuple[str, str]]:
    """``(imported module, its stage)`` for every ``vla_jax`` import in the file, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(module_path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "vla_jax" and len(parts) > 1 and parts[1] in STAGES:
                found.append((name, STAGES[parts[1]]))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "datasets" not in p.parts or p.name != "__init__.py")


def test_every_module_has_a_stage():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES}
    assert tops <= set(STAGES), tops - set(STAGES)


@pytest.mark.parametrize("module_path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_from_a_later_stage(module_path):
    stage = _stage(module_path)
    wrong = [(name, s) for name, s in _imported_stages(module_path) if s not in ALLOWED[stage]]
    assert not wrong, f"{module_path.relative_to(PACKAGE)} ({stage}) imports {wrong}"


def test_the_rule_catches_a_model_reading_the_data_pipeline(tmp_path):
    """The checker itself: a models module importing vla_jax.data is reported."""
    fake = PACKAGE / "models" / "vla.py"
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from vla_jax.data.specs import ACTION_SPACES\n")
    stages = [s for _, s in _imported_stages(source)]
    assert stages == ["data", "data"] and "data" not in ALLOWED[_stage(fake)]


def test_environments_load_neither_tensorflow_nor_jax():
    """Simulators that cannot share a process with TensorFlow (MuJoCo's renderer) run beside vla_jax.envs."""
    import subprocess
    import sys

    probe = (
        "import sys, vla_jax.envs.registry, vla_jax.envs.demo; "
        "print(sorted(m for m in ('tensorflow', 'jax') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
