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

import dataclasses
import json
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> dict:
    import jax

    from vla_jax import sharding
    from vla_jax.cli import _split_overrides
    from vla_jax.config import load_config
    from vla_jax.data import loader
    from vla_jax.models.vla import uses_fast
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
            eval_step = trainer.make_eval_steps(config, run.layout, batch_sharding, prompt, run.eval_graphdef)["val"]

            def error_with(shuffle):
                batches = [loader.to_global_batch(shuffle(b), batch_sharding) for b in val]
                return trainer.evaluate(eval_step, params, batches, run.data, prompt)["val_action_error"]

            ablations = {
                "shuffled_text_error": error_with(_shuffled_prompts),
                "shuffled_image_error": error_with(_shuffled_images),
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


def _roll(x):
    import numpy as np

    return np.roll(x, 1, axis=0)


def _shuffled_prompts(batch):
    """Each example with the next one's prompt (instruction and state): the images no longer match the text."""
    obs = batch.observation
    obs = dataclasses.replace(
        obs, prompt_tokens=_roll(obs.prompt_tokens), prompt_mask=_roll(obs.prompt_mask),
        prompt_ar_mask=_roll(obs.prompt_ar_mask),
    )  # fmt: skip
    return dataclasses.replace(
        batch, observation=obs, prompt_loss_mask=_roll(batch.prompt_loss_mask),
        prompt_truncated=_roll(batch.prompt_truncated),
    )  # fmt: skip


def _shuffled_images(batch):
    """Each example with the next one's images."""
    import jax

    obs = batch.observation
    obs = dataclasses.replace(
        obs, images=jax.tree.map(_roll, obs.images), image_masks=jax.tree.map(_roll, obs.image_masks)
    )
    return dataclasses.replace(batch, observation=obs)


if __name__ == "__main__":
    main(sys.argv[1:])
