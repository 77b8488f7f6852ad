"""Debug: the demo pipeline with a tiny model and a few steps, for tests and smoke runs.

Seconds on one CPU core; the numbers it reaches mean nothing.

    vla-jax train --config experiments/debug.py --workdir /tmp/debug
"""

import pathlib

import ml_collections

from vla_jax.config import load_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = load_config(str(pathlib.Path(__file__).with_name("demo.py")))
    config.unlock()
    config.num_steps = 6
    config.batch_size = 16
    config.log_every = 2
    config.eval_every = 3
    config.checkpoint_every = 2
    config.data.shuffle_buffer_size = 200
    config.data.val_batches = 2
    config.model.vit.width = 32
    config.model.backbone.width = 32
    config.model.backbone.depth = 2
    config.model.backbone.num_heads = 2
    config.model.backbone.head_dim = 16
    config.model.backbone.mlp_dim = 64
    config.model.expert.width = 32
    config.optimizer.warmup_steps = 2
    config.tokenizer.fit_chunks = 2000
    config.tokenizer.action_vocab_size = 256
    config.tokenizer.decode_tokens = 8
    config.closed_loop.env = ""  # tests that want closed-loop episodes ask for them
    return config
