"""The ``vla-jax`` command line.

    vla-jax train --config experiments/demo.py[:arg] [--config.key=value ...] --workdir DIR
    vla-jax train --config CFG --dry-run [--json]
    vla-jax data list [--json]
    vla-jax data check NAME --data-dir DIR [--max-episodes N] [--json]
    vla-jax data stats NAME --data-dir DIR [--json]
    vla-jax data show NAME --data-dir DIR --out FILE.png [--episodes N]
    vla-jax data demo [--data-dir DIR]
    vla-jax tokenizer fit --config CFG [--config.key=value ...] --out FILE [--chunks N] [--json]
    vla-jax tokenizer eval FILE --config CFG [--config.key=value ...] [--chunks N] [--json]
    vla-jax model summary (--config CFG [--config.key=value ...] | --preset NAME) [--mesh fsdp=8] [--json]
    vla-jax export WORKDIR --out DIR [--step N]
    vla-jax serve WORKDIR_OR_RELEASE [--host 127.0.0.1] [--port 8000] [--token T] [--decoder flow|fast] [--keys MAP]

Errors the user can fix (bad config key, missing dataset, corrupt cache,
unusable checkpoint) are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import ml_collections

from vla_jax.errors import ConfigError, VlaJaxError

CONFIG_OVERRIDE_PREFIX = "--config."


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates ``--config.a.b=v`` (or ``--config.a.b v``) overrides from other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(CONFIG_OVERRIDE_PREFIX):
            key_value = arg[len(CONFIG_OVERRIDE_PREFIX) :]
            if "=" not in key_value and i + 1 < len(argv):
                key_value, i = f"{key_value}={argv[i + 1]}", i + 1
            overrides.append(key_value)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-jax", description="Train and serve vision-language-action policies.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (or resume) from a config file")
    train.add_argument("--config", required=True, help="config file, optionally with :arg (experiments/demo.py)")
    train.add_argument("--workdir", default="", help="where config.json, metrics.jsonl and checkpoints/ go")
    train.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) at this step")
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="build shapes with jax.eval_shape, print parameters, FLOPs and memory per device; allocate nothing",
    )
    train.add_argument("--json", action="store_true", help="with --dry-run: print JSON")

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    demo = data_commands.add_parser("demo", help="generate the embedded demo dataset")
    demo.add_argument("--data-dir", default="", help="where to write it (default: the cache dir)")
    metaworld = data_commands.add_parser("metaworld", help="write Meta-World scripted-expert demonstrations (RLDS)")
    metaworld.add_argument("--out", default="", help="TFDS data dir to write (default: $VLA_JAX_CACHE/metaworld)")
    metaworld.add_argument("--episodes-per-task", type=int, default=50, help="successful training episodes per task")
    metaworld.add_argument("--tasks", nargs="+", default=None, help="Meta-World v3 task names (default: MT10)")
    metaworld.add_argument("--json", action="store_true", help="print JSON")
    convert = data_commands.add_parser("convert", help="convert a dataset of another format into RLDS + a spec")
    convert.add_argument("format", choices=("lerobot",), help="the source's format (LeRobot v2.1 / v3.0)")
    convert.add_argument("src", help="the source dataset directory")
    convert.add_argument("--out", required=True, help="TFDS data dir to write NAME/1.0.0/ and NAME_spec.py into")
    convert.add_argument("--name", default="", help="dataset name (default: from the source directory's name)")
    convert.add_argument("--json", action="store_true", help="print JSON")
    listing = data_commands.add_parser("list", help="registered datasets and mixtures")
    listing.add_argument("--json", action="store_true", help="print JSON")
    for name, text in (
        ("check", "validate a dataset against its spec and scan it for problems (exit 0 only if usable)"),
        ("stats", "compute (or read the cached) normalization statistics"),
        ("show", "draw frames, instructions and action/state curves of a few episodes to a PNG"),
    ):
        sub = data_commands.add_parser(name, help=text)
        sub.add_argument("name", help="registered dataset name (see `vla-jax data list`)")
        sub.add_argument("--data-dir", required=True, help="TFDS data dir holding NAME/[CONFIG/]VERSION/")
        sub.add_argument("--json", action="store_true", help="print JSON")
        if name == "check":
            sub.add_argument("--max-episodes", type=int, default=None, help="scan at most this many episodes")
        if name == "show":
            sub.add_argument("--out", required=True, help="PNG file to write")
            sub.add_argument("--episodes", type=int, default=3, help="how many episodes to draw")

    tokenizer = commands.add_parser("tokenizer", help="action tokenizers")
    tokenizer_commands = tokenizer.add_subparsers(dest="tokenizer_command", required=True)
    fit = tokenizer_commands.add_parser("fit", help="fit config.tokenizer.action on the config's training chunks")
    fit.add_argument("--out", required=True, help="tokenizer file to write")
    evaluation = tokenizer_commands.add_parser("eval", help="a tokenizer file against binning on held-out chunks")
    evaluation.add_argument("file", help="tokenizer file (from `vla-jax tokenizer fit`)")
    for sub, default in ((fit, "config.tokenizer.fit_chunks"), (evaluation, "5000")):
        sub.add_argument("--config", required=True, help="config file whose data mixture and tokenizer settings to use")
        sub.add_argument("--chunks", type=int, default=None, help=f"action chunks to sample (default {default})")
        sub.add_argument("--json", action="store_true", help="print JSON")

    model = commands.add_parser("model", help="model tools")
    model_commands = model.add_subparsers(dest="model_command", required=True)
    summary = model_commands.add_parser("summary", help="parameters, FLOPs and memory per device, from shapes alone")
    source = summary.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="config file whose model, data shapes, tokenizer and mesh to use")
    source.add_argument("--preset", help="a model preset (tiny, small, paligemma_himoe, pi0) with its default inputs")
    source.add_argument("--release", help="a release or converted weights directory: its model and inputs")
    summary.add_argument(
        "--mesh",
        default="",
        help="mesh axes as axis=size,... (e.g. fsdp=8); default: the config's mesh, or fsdp over the local devices",
    )
    summary.add_argument("--json", action="store_true", help="print JSON")

    export = commands.add_parser("export", help="write a self-contained release of a training workdir's checkpoint")
    export.add_argument("workdir", help="training workdir (holds checkpoints/)")
    export.add_argument("--out", required=True, help="release directory to create (must not exist, or be empty)")
    export.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest complete one)")
    export.add_argument("--json", action="store_true", help="print release.json")

    convert = commands.add_parser("convert", help="import released weights (PaliGemma, openpi π0 / π0-FAST)")
    convert.add_argument("kind", help="paligemma_npz, paligemma_hf or openpi")
    convert.add_argument("src", help="the source checkpoint file or directory")
    convert.add_argument("--out", required=True, help="weights directory to create (must not exist, or be empty)")
    convert.add_argument("--preset", default="", help="the target model preset (default: paligemma_himoe; openpi: pi0)")
    convert.add_argument("--horizon", type=int, default=0, help="action chunk length (default: the preset's)")
    convert.add_argument("--tokenizer", default="", help="the source's sentencepiece model (e.g. tokenizer.model)")
    convert.add_argument("--json", action="store_true", help="print release.json")

    serve = commands.add_parser("serve", help="serve a policy over websockets (openpi's policy protocol)")
    serve.add_argument("path", help="a release directory (vla-jax export) or a training workdir")
    serve.add_argument("--step", type=int, default=None, help="with a workdir: checkpoint step (default: latest)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token", default=None, help="require 'Authorization: Api-Key TOKEN' from clients")
    serve.add_argument("--decoder", choices=("flow", "fast"), default=None, help="default: flow where the model has it")
    serve.add_argument("--flow-steps", type=int, default=None, help="Euler steps of the flow sampler")
    serve.add_argument("--max-batch", type=int, default=8, help="requests batched into one model call")
    serve.add_argument("--max-message-mb", type=float, default=32.0, help="largest request accepted, MiB")
    serve.add_argument(
        "--keys", default="", help="observation key map: a preset (libero, droid) or ours=theirs[+theirs2],..."
    )
    evaluate = commands.add_parser("eval", help="closed-loop success of a policy in an environment")
    evaluate.add_argument("path", nargs="?", help="a release directory or a training workdir (or use --server)")
    evaluate.add_argument("--env", required=True, help="environment: demo or metaworld (MT10)")
    evaluate.add_argument("--episodes", type=int, default=100, help="held-out episodes (seeds) to run")
    evaluate.add_argument("--seed", type=int, default=0, help="which held-out seeds (the same seed: the same scenes)")
    evaluate.add_argument("--step", type=int, default=None, help="with a workdir: checkpoint step (default: latest)")
    evaluate.add_argument("--server", default=None, help="query a running `vla-jax serve` at HOST:PORT instead")
    evaluate.add_argument("--token", default=None, help="with --server: its API key")
    evaluate.add_argument("--decoder", choices=("flow", "fast"), default=None, help="default: flow where it exists")
    evaluate.add_argument("--flow-steps", type=int, default=None, help="Euler steps of the flow sampler")
    chunking = evaluate.add_mutually_exclusive_group()
    chunking.add_argument("--execute", type=int, default=None, help="actions executed per chunk (default: all)")
    chunking.add_argument(
        "--ensemble", type=float, default=None, metavar="DECAY", help="query every step, ACT ensembling (0.01)"
    )
    evaluate.add_argument("--num-envs", type=int, default=16, help="environments stepped together")
    evaluate.add_argument("--shuffle-instructions", action="store_true", help="tell each episode another's task")
    evaluate.add_argument(
        "--blank-camera", action="append", default=[], metavar="NAME", help="show this camera black (repeatable)"
    )
    evaluate.add_argument("--expert", action="store_true", help="run the scripted expert instead of a policy")
    evaluate.add_argument(
        "--out",
        default=None,
        help="where results.json and episodes.gif go (default: WORKDIR/eval/<settings> or ./eval)",
    )
    evaluate.add_argument("--video-episodes", type=int, default=8, help="episodes shown in episodes.gif (0: none)")
    evaluate.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _parse_mesh(text: str) -> dict[str, int]:
    mesh = {}
    for part in filter(None, text.split(",")):
        axis, sep, size = part.partition("=")
        if not sep or not size.lstrip("-").isdigit():
            raise ConfigError(f"--mesh entry {part!r} is not of the form axis=size (e.g. fsdp=8)")
        mesh[axis.strip()] = int(size)
    from vla_jax import validation

    validation.check_mesh_shape(mesh, "--mesh")
    return mesh


def _validate(config, device_count: int | None) -> None:
    """The whole config checked at once (a ConfigError on the first problem); warnings go to stderr."""
    from vla_jax import validation

    for line in validation.validate_config(config, device_count=device_count):
        print(f"vla-jax: warning: {line}", file=sys.stderr)


def _model(args, overrides: list[str]) -> None:
    from vla_jax import config as config_lib
    from vla_jax import sharding
    from vla_jax.models import presets
    from vla_jax.training import summary, trainer

    mesh_shape = _parse_mesh(args.mesh) or None
    if args.preset:
        if overrides:
            raise ConfigError("--config.* overrides need --config, not --preset")
        if args.preset not in presets.PRESETS:
            raise ConfigError(f"unknown preset {args.preset!r}; expected one of {presets.PRESETS}")
        mesh = sharding.abstract_mesh(mesh_shape or {"fsdp": -1})
        result = summary.summarize(presets.model_config(args.preset), presets.default_io(args.preset), mesh)
    elif args.release:
        from vla_jax.observation import IOShapes
        from vla_jax.training import release_layout

        if overrides:
            raise ConfigError("--config.* overrides need --config, not --release")
        root = pathlib.Path(args.release)
        release_layout.verify(root)
        config = ml_collections.ConfigDict(json.loads((root / "config.json").read_text()))
        io = IOShapes.from_json(json.loads((root / "policy.json").read_text())["io"])
        result = summary.summarize(config.model, io, sharding.abstract_mesh(mesh_shape or {"fsdp": -1}))
    else:
        config = config_lib.load_config(args.config, overrides)
        _validate(config, device_count=None)
        result = trainer.summarize_config(config, mesh_shape)
    _print(result, args.json, summary.format_summary(result))


def _tokenizer(args, overrides: list[str]) -> None:
    from vla_jax import config as config_lib
    from vla_jax.data import tokenizer_commands as commands

    config = config_lib.load_config(args.config, overrides)
    _validate(config, device_count=None)
    if args.tokenizer_command == "fit":
        result = commands.fit(config, args.out, args.chunks)
        text = f"wrote {result['out']}: {result['kind']}, {result['vocab_size']} ids, fit on {result['chunks']} chunks"
        _print(result, args.json, text)
    else:
        result = commands.eval_file(config, args.file, args.chunks or 5000)
        _print(result, args.json, commands.format_eval(result))


def _train(args, overrides: list[str]) -> None:
    from vla_jax import config as config_lib
    from vla_jax import distributed

    if not args.dry_run:
        distributed.initialize_from_env()
    config = config_lib.load_config(args.config, overrides)
    if args.dry_run:
        _validate(config, device_count=None)  # the mesh is abstract
    else:
        import jax

        _validate(config, device_count=jax.device_count())
    from vla_jax.training import trainer

    if args.dry_run:
        result = trainer.dry_run(config)
        _print(result, args.json, trainer.format_dry_run(result))
        return
    if not args.workdir:
        raise ConfigError("vla-jax train needs --workdir (unless --dry-run)")
    closed_loop = None
    if config.closed_loop.env:
        from vla_jax.evaluation.closed_loop import TrainingEvaluator

        closed_loop = TrainingEvaluator(config.closed_loop)
    trainer.train(config, args.workdir, stop_at_step=args.stop_at, validate_first=False, closed_loop=closed_loop)


def _export(args) -> None:
    from vla_jax.inference import release

    summary = release.export(args.workdir, args.out, args.step)
    text = (
        f"wrote {args.out}: step {summary['step']} ({summary['parameters_from']}), {summary['num_params']:,} params, "
        f"datasets {sorted(summary['datasets'])}, {len(summary['files'])} files"
    )
    _print(summary, args.json, text)


def _convert(args) -> None:
    from vla_jax.convert import commands

    summary = commands.convert(
        args.kind, args.src, args.out, preset=args.preset, horizon=args.horizon, tokenizer=args.tokenizer
    )
    text = (
        f"wrote {args.out}: {summary['num_params']:,} params from {args.kind} {args.src}; "
        "every tensor's fate in conversion_report.json"
    )
    _print(summary, args.json, text)


def _serve(args) -> None:
    from vla_jax.inference import server
    from vla_jax.inference.policy import Policy, bucket_sizes

    key_map = server.KeyMap.parse(args.keys) if args.keys else None  # a bad map fails before the model loads
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch is {args.max_batch}; expected at least 1")
    policy = Policy.load(
        args.path,
        step=args.step,
        decoder=args.decoder,
        flow_steps=args.flow_steps,
        warmup_batch_sizes=bucket_sizes(args.max_batch),
    )
    compiled = ", ".join(f"{k} {v:.1f}s" for k, v in policy.warmup_s.items())
    print(f"vla-jax: loaded {policy.parts.source} (step {policy.parts.step}); compiled {compiled}", flush=True)
    limit = int(args.max_message_mb * 2**20)
    running = server.PolicyServer(
        policy,
        args.host,
        args.port,
        token=args.token,
        max_message_bytes=limit,
        max_batch_size=args.max_batch,
        key_map=key_map,
    )
    print(f"vla-jax: serving on ws://{args.host}:{args.port} (decoder {policy.decoder}); Ctrl-C stops", flush=True)
    running.serve_forever()


def _eval_out_dir(args) -> pathlib.Path:
    """``--out``, or a directory named by the settings (so runs with other controls do not overwrite it)."""
    if args.out:
        return pathlib.Path(args.out)
    parts = [args.env, f"seed{args.seed}"]
    if args.expert:
        parts.append("expert")
    parts += [args.decoder] if args.decoder else []
    parts += ["shuffled"] if args.shuffle_instructions else []
    parts += [f"blank-{name}" for name in args.blank_camera]
    is_workdir = args.path and (pathlib.Path(args.path) / "checkpoints").is_dir()
    base = pathlib.Path(args.path) if is_workdir else pathlib.Path(".")
    return base / "eval" / "_".join(parts)


def _server_address(text: str) -> tuple[str, int]:
    host, _, port = text.removeprefix("ws://").rstrip("/").rpartition(":")
    if not port.isdigit() or not host:
        raise ConfigError(f"--server {text!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
    return host, int(port)


def _eval(args) -> None:
    from vla_jax.evaluation import closed_loop, report
    from vla_jax.evaluation.runner import Controls

    spec = closed_loop.env_spec(args.env)
    sources = [bool(args.path), bool(args.server), args.expert]
    if sum(sources) != 1:
        raise ConfigError("vla-jax eval needs exactly one of: a release or workdir PATH, --server HOST:PORT, --expert")
    unused = {
        "--step": args.step is not None and not args.path,
        "--decoder": args.decoder is not None and not args.path,
        "--flow-steps": args.flow_steps is not None and not args.path,
        "--token": args.token is not None and not args.server,
        "--execute": args.execute is not None and args.expert,
        "--ensemble": args.ensemble is not None and args.expert,
    }
    for option, ignored in unused.items():
        if ignored:
            source = "--server" if args.server else "--expert" if args.expert else "a PATH"
            raise ConfigError(f"{option} does not apply with {source} (the server or the expert decides it)")
    if args.video_episodes < 0:
        raise ConfigError(f"--video-episodes is {args.video_episodes}; expected an int >= 0")
    closed_loop.check_settings(
        episodes=args.episodes, num_envs=args.num_envs, execute_steps=args.execute, ensemble_decay=args.ensemble,
        horizon=None, seed=args.seed,
    )  # fmt: skip
    unknown = [name for name in args.blank_camera if name not in spec.cameras]
    if unknown:
        raise ConfigError(f"--blank-camera {unknown[0]!r}: env {args.env!r} has cameras {list(spec.cameras)}")
    controls = Controls(args.shuffle_instructions, tuple(args.blank_camera))
    out = _eval_out_dir(args)
    num_envs = closed_loop.envs_to_run(args.env, args.num_envs, args.episodes)
    if num_envs < min(args.num_envs, args.episodes):
        print(f"vla-jax: running {num_envs} environments at once (one per CPU core)", file=sys.stderr, flush=True)
    policy, close = None, None
    if args.server:
        from vla_jax.inference.client import PolicyClient, PolicyServerError

        host, port = _server_address(args.server)
        try:
            policy = PolicyClient(host, port, token=args.token)
        except (PolicyServerError, TimeoutError) as error:
            raise ConfigError(f"--server {args.server}: {error}") from None
        close = policy.close
    elif args.path:
        from vla_jax.inference.policy import Policy

        policy = Policy.load(
            args.path, step=args.step, decoder=args.decoder, flow_steps=args.flow_steps,
            warmup_batch_sizes=(num_envs,), pad_batch_to=num_envs,
        )  # fmt: skip
        print(f"vla-jax: loaded {policy.parts.source} (step {policy.parts.step})", file=sys.stderr, flush=True)
    try:
        summary = closed_loop.evaluate(
            policy, args.env, args.episodes, seed=args.seed, num_envs=num_envs, execute_steps=args.execute,
            ensemble_decay=args.ensemble, controls=controls, out=out, video_episodes=args.video_episodes,
            expert=args.expert,
        )  # fmt: skip
    except (OSError, RuntimeError) as error:  # the server refused a request or went away
        if not args.server:
            raise
        raise ConfigError(f"--server {args.server}: {str(error).splitlines()[0]}") from None
    finally:
        if close is not None:
            close()
    text = "\n".join(
        [
            f"{summary['policy']} on {args.env}, {args.episodes} held-out episodes (seed {args.seed}), "
            f"controls: {controls.describe()}, {summary['execution']}, {summary['wall_s']:.1f} s",
            report.format_summary(summary),
            f"wrote {summary['results']}" + (f" and {summary['video']}" if "video" in summary else ""),
        ]
    )
    _print(summary, args.json, text)


def _print(result: dict, as_json: bool, text: str) -> None:
    print(json.dumps(result, indent=1) if as_json else text)


def _data(args) -> int:
    if args.data_command == "demo":
        from vla_jax.data import demo

        print(demo.ensure_demo_dataset(args.data_dir or None))
    elif args.data_command == "metaworld":
        from vla_jax.data import metaworld_demos
        from vla_jax.envs import metaworld as mw

        result = metaworld_demos.generate(
            args.out or None, episodes_per_task=args.episodes_per_task, tasks=tuple(args.tasks or mw.MT10),
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )  # fmt: skip
        text = (
            f"wrote {result['builder_dir']}: {result['train_episodes']} training episodes ({result['train_steps']} "
            f"steps), {result['val_episodes']} validation, {result['wall_s']:.0f} s"
        )
        _print(result, args.json, text)
    elif args.data_command == "convert":
        from vla_jax.data import lerobot

        result = lerobot.convert(
            args.src, args.out, name=args.name, log=lambda line: print(line, file=sys.stderr, flush=True)
        )
        text = (
            f"wrote {result['builder_dir']}: {result['episodes']} episodes, {result['steps']} steps "
            f"({result['resumed_episodes']} resumed), {result['wall_s']:.0f} s; spec {result['spec_file']}: "
            "confirm the fields marked CONFIRM, then put it on $VLA_JAX_SPECS"
        )
        _print(result, args.json, text)
    elif args.data_command == "list":
        from vla_jax.data import catalog

        listing = catalog.listing()
        _print(listing, args.json, catalog.format_listing(listing))
    elif args.data_command == "check":
        from vla_jax.data import check

        report = check.check_dataset(args.name, args.data_dir, max_episodes=args.max_episodes)
        _print(report, args.json, check.format_report(report))
        return 0 if report["usable"] else 1
    elif args.data_command == "stats":
        from vla_jax.data import catalog

        stats = catalog.dataset_statistics(args.name, args.data_dir)
        _print(stats, args.json, catalog.format_statistics(stats))
    elif args.data_command == "show":
        from vla_jax.data import show

        path = show.render(args.name, args.data_dir, args.out, num_episodes=args.episodes)
        _print({"out": str(path)}, args.json, f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    if overrides and args.command not in ("train", "tokenizer", "model"):
        _parser().error(f"--config.* overrides only apply to 'train', 'tokenizer' and 'model', got {overrides}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if args.command == "train":
            _train(args, overrides)
        elif args.command == "data":
            return _data(args)
        elif args.command == "tokenizer":
            _tokenizer(args, overrides)
        elif args.command == "model":
            _model(args, overrides)
        elif args.command == "export":
            _export(args)
        elif args.command == "convert":
            _convert(args)
        elif args.command == "serve":
            _serve(args)
        elif args.command == "eval":
            _eval(args)
    except VlaJaxError as e:
        print(f"vla-jax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
