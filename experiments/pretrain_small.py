"""Pretrain the `small` model (≈209M parameters) on one 8-GPU node.

What it is for: experiments that need a real model but not a pod: ablations of
the action expert, MoE plans and tokenizers, on the Bridge V2 data (or any
mixture via `--config.data.mixture`). Data parallel over the node's GPUs
(the model, AdamW state and EMA take about 3.1 GiB on each), bf16 compute.

Budget: 100k steps x 256 examples = 25.6M examples; 2k warmup steps, cosine
from 3e-4 to 3e-5.

    launch/slurm_gpu.sbatch --nodes 1 -- vla-jax train --config experiments/pretrain_small.py --workdir runs/small
    vla-jax train --config experiments/pretrain_small.py --dry-run
"""

import ml_collections

from vla_jax.data.config import data_config
from vla_jax.models import presets
from vla_jax.tokenizers.config import tokenizer_config
from vla_jax.training.defaults import run_config
from vla_jax.training.optimizer import optimizer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = run_config(
        num_steps=100_000,
        batch_size=256,
        ema_decay=0.999,
        log_every=100,
        eval_every=5000,
        checkpoint_every=2000,
        keep_period=20_000,
    )
    config.mesh.update({"data": 8, "fsdp": 1})
    config.sharding.max_replicated_fraction = 1.0  # data parallel: replicated by design

    config.data = data_config(mixture="bridge_v2")
    config.data.data_dir = "/data/oxe"  # RLDS datasets (tfds layout)
    config.data.cameras = ("primary", "secondary")  # bridge_v2's two third-person cameras (it has no wrist camera)
    config.data.image_size = 224
    config.data.action_horizon = 10
    config.data.action_dim = 24
    config.data.state_dim = 24
    config.data.ram_budget_gb = 64.0

    config.tokenizer = tokenizer_config()
    config.tokenizer.max_length = 96
    config.tokenizer.decode_tokens = 48

    config.model = presets.model_config("small")  # mode "fast+flow"
    config.model.dtype = "bfloat16"

    config.optimizer = optimizer_config(peak_lr=3e-4, end_lr=3e-5, warmup_steps=2000, weight_decay=1e-4)
    return config
