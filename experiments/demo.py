"""Demo: train the small VLA on the embedded procedural pick-up dataset, on CPU.

The main job of the README (`make demo`). The dataset is generated on first use
into ~/.cache/vla_jax (or $VLA_JAX_CACHE). The policy learns actions as FAST
tokens in a π0-FAST prompt and is validated by greedy decoding. A default run
takes about 8.5 minutes on 2 CPU cores and ends with a validation action error
of about 0.57 times that of always predicting the mean action (the continuous
head, `--config.model.mode=regression`, reached about 0.39 in 2000 steps at
peak_lr 1e-3).

    vla-jax train --config experiments/demo.py --workdir workdirs/demo
"""

import ml_collections

from vla_jax import sharding
from vla_jax.data.config import data_config
from vla_jax.models import presets
from vla_jax.tokenizers.config import tokenizer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.num_steps = 3000
    config.batch_size = 32
    config.seed = 0
    config.log_every = 50
    config.eval_every = 1500
    config.checkpoint_every = 500
    config.keep_checkpoints = 3

    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "expert": 1})
    config.sharding = ml_collections.ConfigDict()
    config.sharding.rules = sharding.DEFAULT_RULES
    config.sharding.fsdp_min_bytes = 4 * 2**20
    config.sharding.max_replicated_fraction = 1.0  # tiny: every tensor is under fsdp_min_bytes

    config.data = data_config(mixture="vla_demo")
    config.data.action_horizon = 4  # 0.4 s at 10 Hz (tokenizer eval at 1 s: --config.data.action_horizon=10)
    config.data.cameras = ("primary", "wrist")
    config.data.image_size = 64
    config.data.text_vocab_size = 1024
    config.data.max_text_length = 12
    config.data.shuffle_buffer_size = 10_000
    config.data.val_batches = 16

    config.tokenizer = tokenizer_config()
    config.tokenizer.action = "fast"
    config.tokenizer.action_vocab_size = 256
    config.tokenizer.text_vocab_size = 1024
    config.tokenizer.max_length = 48
    config.tokenizer.decode_tokens = 20

    config.model = presets.model_config("tiny")
    config.model.mode = "fast"  # FAST action tokens; "flow" or "fast+flow" for the action expert

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.peak_lr = 2e-3
    config.optimizer.end_lr = 1e-5
    config.optimizer.warmup_steps = 50
    config.optimizer.clip_norm = 1.0
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.95
    config.optimizer.weight_decay = 1e-4
    return config
