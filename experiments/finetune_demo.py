"""Fine-tune the demo policy for another robot: absolute end-effector targets and one camera.

The worked example of "Fine-tune on your robot" (README). The source is a
`make demo` run (or its release from `vla-jax export`); the new robot is the
demo dataset's `absolute` config (`vla_demo_absolute`: the same pick-up task,
actions ``[x, y, z, gripper]`` as absolute targets, the table camera only, 400
episodes). What changes against the source, and what the fine-tune does about it:

- action space `eef_delta_xyz` -> `eef_absolute`: the action-space router sends
  the new space where the source's trained one went (`init.action_space_from`);
- tokenizers: the source's text tokenizer comes along (its token embeddings
  mean nothing without it), and so does its FAST tokenizer, because it fits
  the new chunks ([4, 4], quantile-normalized): DCT + BPE is not tied to one
  action space (π0-FAST's universal tokenizer); one that does not fit is
  replaced by a FAST tokenizer fit on the new data;
- cameras ("primary", "wrist") -> ("primary",): the ViT is shared by cameras,
  so nothing is re-initialized;
- statistics: the new dataset's are used; the source's are kept beside them
  in the new checkpoints.

Everything else loads from the source; `init_report.json` in the workdir lists
every parameter. Point `init.source` at your run:

    vla-jax train --config experiments/finetune_demo.py --workdir workdirs/finetune \
        --config.init.source=workdirs/demo
"""

import pathlib

import ml_collections

from vla_jax.config import load_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = load_config(str(pathlib.Path(__file__).with_name("demo.py")))  # the source's model and tokenizers
    config.unlock()
    config.init.source = "workdirs/demo"
    config.init.action_space_from = "eef_delta_xyz"
    config.num_steps = 1000
    config.eval_every = 500
    config.data.mixture = "vla_demo_absolute"
    config.data.cameras = ("primary",)
    config.closed_loop.env = ""  # the demo environment takes delta actions
    # The demo's own peak LR: at 5e-4 the flow expert relearned the new action space too slowly to catch a
    # from-scratch run (benchmarks/RESULTS.md, "Fine-tuning"); the short warmup keeps the source's weights.
    config.optimizer.peak_lr = 2e-3
    config.optimizer.warmup_steps = 20
    return config
