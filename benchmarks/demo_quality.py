"""Demo quality: train the demo config from scratch, compare with the mean-action baseline.

Prints one JSON object:
  val_action_error       mean absolute error of predicted chunks, normalized units
  mean_baseline_error    the same for always predicting the training mean action
  error_ratio            the two divided (the bar: <= 0.5)
  fast_error_ratio       in fast+flow mode: the ratio of greedy FAST decoding (the expert gives error_ratio)
  shuffled_text_error    error when each sample gets another sample's prompt (instruction and state)
  shuffled_image_error   error when each sample gets another sample's images
  wall_s                 wall-clock seconds of the whole training run

    python benchmarks/demo_quality.py [--config.key=value ...]
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> dict:
    import jax
    import numpy as np

    from vla_jax import sharding
    from vla_jax.cli import _split_overrides
    from vla_jax.config import load_config
    from vla_jax.data import loader
    from vla_jax.models.vla import uses_fast
    from vla_jax.tokenizers.prompt import PROMPT_KEYS
    from vla_jax.training import checkpoint, trainer

    _, overrides = _split_overrides(argv)
    config = load_config(str(REPO / "experiments" / "demo.py"), overrides)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        summary = trainer.train(config, workdir)
        wall = time.perf_counter() - start

        # Ablations on the trained policy: break the pairing of images or text with the rest.
        run = trainer.setup(config)
        ckpt = checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints", max_to_keep=1, save_interval_steps=1)
        params = ckpt.restore_latest(run.layout.abstract)["state"]["params"]
        ckpt.close()
        prompt = trainer.prepare_prompt_tokenizer(config, run.data, pathlib.Path(workdir))
        val = loader.val_batches(
            run.data,
            config.data,
            global_batch_size=config.batch_size,
            prompt=prompt,
            prompt_actions=uses_fast(config.model.mode),
        )
        batch_sharding = run.batch_sharding
        with jax.set_mesh(run.mesh), sharding.logical_rules(run.rules):
            eval_step = trainer.make_eval_steps(config, run.layout, batch_sharding, prompt)["val"]

            def error_with(keys):
                shuffled = [{k: (np.roll(v, 1, axis=0) if k in keys else v) for k, v in b.items()} for b in val]
                batches = [loader.to_global_batch(b, batch_sharding) for b in shuffled]
                return trainer.evaluate(eval_step, params, batches, run.data, prompt)["val_action_error"]

            images = [k for k in val[0] if k.startswith("image_")]
            ablations = {
                "shuffled_text_error": error_with(set(PROMPT_KEYS)),
                "shuffled_image_error": error_with(set(images)),
            }
    result = {
        "val_action_error": summary["val_action_error"],
        "mean_baseline_error": summary["val_mean_baseline_error"],
        "error_ratio": summary["val_error_ratio"],
        "decode_valid_rate": summary.get("val_decode_valid_rate"),
        "fast_error_ratio": summary.get("val_fast_error_ratio"),
        "mode": config.model.mode,
        **ablations,
        "num_steps": config.num_steps,
        "batch_size": config.batch_size,
        "wall_s": round(wall, 1),
        "devices": jax.device_count(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
