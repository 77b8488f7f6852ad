"""Inference latency: ``Policy.infer`` in process and through the websocket server on loopback.

Prints one JSON object with, per case, p50/p95 milliseconds of one observation's
round trip in process and served, their ratio (served / in process, the same
run), and the first-call compile seconds (warm-up at load). Cases: the demo
model with the flow expert and with greedy FAST decoding, and ``small`` (random
init, flow, 224 px). Each observation holds two 256x256 camera images, so the
resize and (served) the msgpack transfer of ~400 KB are part of the figure.

    python benchmarks/inference_latency.py [--workdir DEMO_WORKDIR] [--requests 50]

Without ``--workdir`` the demo config is trained for ``--train-steps`` steps
first (latency does not depend on how well it is trained, except that FAST
decoding stops at the end marker).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import common  # noqa: F401  (puts the repo on sys.path)
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def percentiles(samples: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(samples, 50)), "p95_ms": float(np.percentile(samples, 95))}


def observation(policy, seed: int) -> dict:
    dataset = policy.datasets[0]
    e = policy.parts.embodiments[dataset]
    rng = np.random.default_rng(seed)
    obs = {key: rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) for key in policy.expected_keys(dataset)[:-2]}
    obs.update(state=np.zeros(e.state_dim, np.float32), prompt="pick up the red block", dataset=dataset, seed=seed)
    return obs


def measure(policy, requests: int) -> dict:
    from vla_jax.inference.client import PolicyClient
    from vla_jax.inference.server import PolicyServer

    observations = [observation(policy, i) for i in range(requests)]
    in_process, served = [], []
    with PolicyServer(policy, port=0) as server, PolicyClient("127.0.0.1", server.port) as client:
        client.infer(observations[0])
        for obs in observations:  # in turn, so both see the same machine load
            start = time.perf_counter()
            policy.infer(obs)
            in_process.append(1e3 * (time.perf_counter() - start))
            start = time.perf_counter()
            client.infer(obs)
            served.append(1e3 * (time.perf_counter() - start))
    result = {"in_process": percentiles(in_process), "served": percentiles(served)}
    result["served_over_in_process_p50"] = result["served"]["p50_ms"] / result["in_process"]["p50_ms"]
    result["first_call_compile_s"] = dict(policy.warmup_s)
    result["num_params"] = policy.parts.num_params
    return result


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="", help="a trained demo workdir (default: train one)")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args(argv)

    from vla_jax.config import load_config
    from vla_jax.inference.policy import Policy
    from vla_jax.models import presets
    from vla_jax.training import trainer

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir
        if not workdir:
            workdir = str(pathlib.Path(tmp) / "demo")
            config = load_config(str(REPO / "experiments" / "demo.py"), [f"num_steps={args.train_steps}"])
            trainer.train(config, workdir)
        for decoder in ("flow", "fast"):
            policy = Policy.load(workdir, decoder=decoder)
            results[f"demo_{decoder}"] = measure(policy, args.requests)
        small = load_config(str(REPO / "experiments" / "demo.py"), ["data.image_size=224", "batch_size=8"])
        small.unlock()
        small.model = presets.model_config("small")
        small.model.mode = "flow"
        small_dir = pathlib.Path(tmp) / "small"
        trainer.write_initial_checkpoint(small, small_dir)
        results["small_flow_random_init"] = measure(Policy.load(small_dir), args.requests)
    import jax

    results["device"] = jax.devices()[0].device_kind
    results["requests"] = args.requests
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
