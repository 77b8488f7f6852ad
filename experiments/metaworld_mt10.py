"""Meta-World MT10: one multi-task policy for the ten MT10 tasks, from the scripted experts' demonstrations.

Make the data first (50 successful episodes per task, about 37k steps at 64x64;
minutes per thousand episodes on a few CPU cores, one spawned simulator per core):

    vla-jax data metaworld                    # writes $VLA_JAX_CACHE/metaworld (default ~/.cache/vla_jax/metaworld)
    vla-jax train --config experiments/metaworld_mt10.py --workdir workdirs/metaworld_mt10

Another data dir: ``vla-jax data metaworld --out DIR`` and ``--config.data.data_dir=DIR``.
The policy sees one camera (``corner2`` as ``primary``, 64x64), the 4-D state
(hand xyz, gripper opening) and the task's instruction; it acts at 80 Hz.
During training, ``closed_loop`` runs held-out MT10 variations in spawned
simulator workers (MuJoCo never renders in the trainer's TensorFlow process).
A tiny model from scratch: 2000 steps on 12 episodes per task reached 48% mean
success on 100 held-out variations (the scripted experts: 96%), per task in
benchmarks/RESULTS.md (2026-12-07).
"""

import ml_collections

from vla_jax.data import metaworld_demos
from vla_jax.data.config import data_config
from vla_jax.models import presets
from vla_jax.tokenizers.config import tokenizer_config
from vla_jax.training.defaults import run_config
from vla_jax.training.optimizer import optimizer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = run_config(num_steps=20_000, batch_size=64, eval_every=2000, checkpoint_every=2000)
    config.sharding.max_replicated_fraction = 1.0  # tiny: every tensor is under fsdp_min_bytes

    config.data = data_config(mixture=metaworld_demos.NAME)
    config.data.data_dir = str(metaworld_demos.default_data_dir())  # where `vla-jax data metaworld` writes
    config.data.action_horizon = 4  # 50 ms at 80 Hz
    config.data.action_dim = 4  # Meta-World's own widths: --dry-run and `model summary` need no data on disk
    config.data.state_dim = 4
    config.data.cameras = ("primary",)
    config.data.image_size = 64
    config.data.shuffle_buffer_size = 10_000
    config.data.val_batches = 8

    config.tokenizer = tokenizer_config()
    config.tokenizer.action = "fast"
    config.tokenizer.action_vocab_size = 256
    config.tokenizer.text_vocab_size = 1024
    config.tokenizer.max_length = 48
    config.tokenizer.decode_tokens = 20

    config.model = presets.model_config("tiny")
    config.model.mode = "fast+flow"
    config.model.flow.knowledge_insulation = False
    config.model.expert.moe.as_dispatch = "capacity"  # one action space, as in experiments/demo.py

    config.optimizer = optimizer_config(peak_lr=1e-3, end_lr=1e-5, warmup_steps=200, weight_decay=1e-4)

    config.closed_loop.env = "metaworld"
    config.closed_loop.episodes = 50  # 5 held-out variations per MT10 task
    config.closed_loop.num_envs = 10
    config.closed_loop.execute_steps = 4
    return config
