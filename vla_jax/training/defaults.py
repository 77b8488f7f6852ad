"""The run-level options every training config has, with their defaults.

Experiment files start from :func:`run_config` and add ``data``, ``tokenizer``,
``model`` and ``optimizer`` groups (see ``experiments/``).
"""

from __future__ import annotations

import ml_collections

from vla_jax import sharding


def run_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_steps = 1000
    c.batch_size = 32  # global, over every process and device
    c.seed = 0
    c.grad_accum_steps = 1  # the batch is split into this many micro-batches per step
    c.ema_decay = 0.0  # 0: no EMA; else EMA params (e.g. 0.999) are kept, checkpointed and validated
    c.max_nonfinite_skips = 0  # steps with a non-finite loss/gradient skipped (logged) before the run stops
    c.log_every = 50
    c.eval_every = 1000
    c.checkpoint_every = 500
    c.keep_checkpoints = 3  # the last N are kept...
    c.keep_period = 0  # ...and, if > 0, every step that is a multiple of this
    c.tensorboard = True  # event files in WORKDIR/tensorboard (process 0)
    c.wandb_project = ""  # non-empty: also log to Weights & Biases (needs `pip install wandb`)
    c.device_peak_flops = 0.0  # per device, for MFU; 0: from a table of known accelerators
    # Closed-loop evaluation at every eval_every and at the end (vla-jax train): env "" is off.
    c.closed_loop = ml_collections.ConfigDict()
    c.closed_loop.env = ""  # an environment of vla_jax.envs.registry, e.g. "demo"
    c.closed_loop.episodes = 50  # held-out seeds, the same at every evaluation
    c.closed_loop.num_envs = 16  # episodes run at once (one batched policy call)
    c.closed_loop.execute_steps = 0  # actions executed per chunk before the next query; 0: the whole chunk
    c.closed_loop.seed = 0  # which held-out seeds (vla-jax eval --seed)
    c.closed_loop.decoder = ""  # "flow" or "fast"; "": the policy's default (flow where the model has it)

    # Start from another run's parameters (a fine-tune; vla_jax.training.init): source "" is a fresh start.
    c.init = ml_collections.ConfigDict()
    c.init.source = ""  # a training workdir or a release directory (vla-jax export)
    c.init.step = 0  # the workdir's checkpoint step; 0: its latest
    c.init.load = ".*"  # parameters taken from the source, by path (e.g. "backbone/layers/0/attention/query")
    c.init.reinit = ""  # parameters started fresh although the source has them; "": none
    c.init.action_space_from = ""  # a trained action space a new action space starts like (its AS expert)
    c.init.action_space_expert = "share"  # "share" that expert, or "copy" it into a new AS expert of its own

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "expert": 1})
    c.sharding = ml_collections.ConfigDict()
    c.sharding.rules = sharding.DEFAULT_RULES
    c.sharding.fsdp_min_bytes = 4 * 2**20  # smaller tensors stay replicated
    c.sharding.max_replicated_fraction = 0.02  # on an fsdp mesh, more replicated parameter bytes is an error
    c.update(overrides)
    return c
