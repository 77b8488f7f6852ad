"""Pretrain PaliGemma-3B + a HiMoE action expert on the OXE magic soup, on a TPU v5p pod.

What it is for: the full-size pretraining run (the `paligemma_himoe` preset,
≈4.07B parameters, 0.34B of the 1.15B action expert active per token),
trained on FAST tokens and flow matching at once (`fast+flow`, with
knowledge insulation). Written for a v5p-128 slice (64 chips = 64 JAX
devices): pure FSDP over all 64, so each chip holds 1/64 of the fp32
parameters, AdamW moments and EMA (about 1.4 GiB; `--dry-run` prints it).

Budget: 200k steps x 1024 examples = 205M examples, about 3 passes over the
~60M frames of the 25 magic-soup datasets; 10k warmup steps, cosine from 5e-5
to 5e-6. Set `data.data_dir` to where the RLDS datasets live (a gs:// bucket
in the pod's region). To start from PaliGemma's weights and tokenizer, convert
them (`vla-jax convert paligemma_npz pt_224.npz --out weights/paligemma
--tokenizer tokenizer.model`) and set `init.source=weights/paligemma`: the ViT
and backbone load, the action expert starts fresh, and the text model comes
with the weights.

    launch/tpu_pod.sh --name vla-pretrain --zone us-east5-a --type v5p-128 \
        -- vla-jax train --config experiments/pretrain_oxe_magic_soup.py --workdir gs://BUCKET/runs/pretrain
    vla-jax train --config experiments/pretrain_oxe_magic_soup.py --dry-run   # shapes and memory, anywhere
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
        num_steps=200_000,
        batch_size=1024,  # 16 examples per chip
        ema_decay=0.999,
        log_every=100,
        eval_every=5000,
        checkpoint_every=2000,
        keep_checkpoints=3,
        keep_period=20_000,
    )
    config.mesh.update({"data": 1, "fsdp": 64, "tensor": 1, "expert": 1})

    config.data = data_config(mixture="oxe_magic_soup")
    config.data.data_dir = "gs://YOUR_BUCKET/oxe"  # RLDS datasets (tfds layout), in the pod's region
    config.data.cameras = ("primary", "wrist")
    config.data.image_size = 224
    config.data.action_horizon = 10  # HiMoE's chunk
    config.data.target_control_hz = 10.0  # chunks of ~1 s whatever the robot's rate
    config.data.action_dim = 24  # the unified action vector of HiMoE, with a validity mask
    config.data.state_dim = 24
    config.data.ram_budget_gb = 96.0  # per host (v5p hosts have 448 GB)
    config.data.read_threads = 32
    config.data.transform_threads = 48

    config.tokenizer = tokenizer_config()
    config.tokenizer.action_vocab_size = 1024
    config.tokenizer.fit_chunks = 100_000
    config.tokenizer.vocab_size = 257_152  # Gemma's vocabulary; FAST ids take its tail
    config.tokenizer.reserved_tail = 128  # Gemma's last ids stay text
    config.tokenizer.max_length = 200
    config.tokenizer.decode_tokens = 96

    config.model = presets.model_config("paligemma_himoe")  # mode "fast+flow"
    config.model.dtype = "bfloat16"
    config.model.remat = "dots"

    config.optimizer = optimizer_config(peak_lr=5e-5, end_lr=5e-6, warmup_steps=10_000, weight_decay=1e-4)
    return config
