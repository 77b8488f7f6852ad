"""The release directory's layout and its check (written by ``inference.release``; read there and by ``training.init``).

See :mod:`vla_jax.inference.release` for what a release holds. ``release.json``
lists the sha256 of every other file; :func:`verify` checks them all before
anything is read, so a corrupt, partial or foreign directory is one error line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
from collections.abc import Iterator

from vla_jax.errors import CheckpointError

FORMAT = "vla_jax.release"
FORMAT_VERSION = 1
RELEASE_FILE = "release.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizers"


def is_release(path: str | pathlib.Path) -> bool:
    return (pathlib.Path(path) / RELEASE_FILE).is_file()


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listing(root: pathlib.Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``root`` except ``release.json``."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != RELEASE_FILE)
    return {p.relative_to(root).as_posix(): sha256(p) for p in files}


def verify(path: str | pathlib.Path) -> dict:
    """``release.json`` of a complete, intact release; CheckpointError naming the first problem otherwise."""
    root = pathlib.Path(path)
    manifest = root / RELEASE_FILE
    try:
        summary = json.loads(manifest.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{root}: {RELEASE_FILE} is unreadable ({error}); not a vla-jax release") from None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        raise CheckpointError(f"{root}: {RELEASE_FILE} is not a {FORMAT} manifest (a foreign directory?)")
    if summary.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{root}: release format version {summary.get('format_version')!r}; this vla_jax reads {FORMAT_VERSION}"
        )
    listed = summary.get("files") or {}
    for name, digest in sorted(listed.items()):
        file = root / name
        if not file.is_file():
            raise CheckpointError(f"{root}: file {name} of the release is missing (a partial copy?)")
        if sha256(file) != digest:
            raise CheckpointError(f"{root}: file {name} does not match its sha256 in {RELEASE_FILE} (corrupt)")
    if not any(name.startswith(f"{PARAMS_DIR}/") for name in listed):
        raise CheckpointError(f"{root}: {RELEASE_FILE} lists no parameter files")
    return summary


def check_out(out: str | pathlib.Path) -> pathlib.Path:
    """``out`` as an absolute path, if a release can be written there (it does not exist, or is empty)."""
    out = pathlib.Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"--out {out} already exists and is not empty; give a new directory")
    return out


@contextlib.contextmanager
def staging(out: str | pathlib.Path) -> Iterator[pathlib.Path]:
    """A temporary directory beside ``out`` to write a release into; renamed to ``out`` when the block ends well
    (after :func:`seal`), removed when it raises. ``out`` must not exist or be empty."""
    out = check_out(out)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if not (tmp / RELEASE_FILE).is_file():
            raise RuntimeError(f"release {out} was staged without release_layout.seal")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def json_text(data) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def write_parts(
    tmp: pathlib.Path, *, config: dict, statistics: dict, policy: dict, tokenizers: dict[str, bytes], params
) -> None:
    """A release's parts into ``tmp`` (see :func:`staging`): config, statistics, policy, tokenizers, Orbax params."""
    import orbax.checkpoint as ocp

    (tmp / "config.json").write_text(json_text(config))
    (tmp / "dataset_statistics.json").write_text(json_text(statistics))
    (tmp / "policy.json").write_text(json_text(policy))
    (tmp / TOKENIZER_DIR).mkdir()
    for name, data in tokenizers.items():
        (tmp / TOKENIZER_DIR / name).write_bytes(data)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    checkpointer.close()


def seal(tmp: pathlib.Path, summary: dict) -> dict:
    """Writes ``release.json``: ``summary`` plus the sha256 of every file written so far. Returns it."""
    summary = dict(summary, files=listing(tmp))
    (tmp / RELEASE_FILE).write_text(json_text(summary))
    return summary
