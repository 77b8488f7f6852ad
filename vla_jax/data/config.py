"""Every data-pipeline option, with its default and meaning, in one place.

Experiment configs start from :func:`data_config` and change what they need,
so a new option gets a default everywhere at once.
"""

from __future__ import annotations

import ml_collections

# Octo-style augmentation of the third-person camera (random crop + colour),
# colour only for the wrist camera (crops would cut away the gripper).
DEFAULT_AUGMENT = {
    "primary": {
        "crop_scale": (0.8, 1.0),
        "crop_ratio": (0.9, 1.1),
        "brightness": 0.1,
        "contrast": (0.9, 1.1),
        "saturation": (0.9, 1.1),
        "hue": 0.05,
    },
    "wrist": {"brightness": 0.1, "contrast": (0.9, 1.1), "saturation": (0.9, 1.1), "hue": 0.05},
}


def data_config(mixture: str) -> ml_collections.ConfigDict:
    """The data options with their defaults, for the dataset or mixture ``mixture``."""
    c = ml_collections.ConfigDict()
    # What to read.
    c.mixture = mixture  # a registered mixture, one dataset, or "name:weight,name:weight"
    c.data_dir = ""  # TFDS data dir holding NAME/[CONFIG/]VERSION/; empty: the demo cache
    c.balance_weights = True  # multiply mixture weights by dataset size in frames
    # Trajectory transforms.
    c.normalization = "quantile"  # "quantile" (q01/q99 -> -1/+1, clipped) or "zscore"
    c.skip_unlabeled = False  # drop episodes without an instruction
    c.max_action = 0.0  # drop episodes with any |action| above this (0: keep all)
    c.target_control_hz = 0.0  # resample faster datasets down to this rate (0: native rates)
    c.action_horizon = 4  # steps per action chunk
    c.history = 1  # observation window (frames up to and including the current one)
    c.goal_relabeling = False  # add goal_image_{role} from a uniformly drawn later step
    c.subsample_length = 0  # keep at most this many random steps per trajectory (0: all)
    c.action_dim = 0  # unified (zero-padded) action width (0: the largest in the mixture)
    c.state_dim = 0  # unified state width (0: the largest in the mixture)
    # Frame transforms.
    c.cameras = ("primary",)  # camera roles the model sees, in token order
    c.depth_cameras = ()  # depth roles the model sees
    c.image_size = 224
    c.resize_mode = "pad"  # "pad" (keep aspect, pad), "crop" (keep aspect, centre crop) or "stretch"
    c.augment = ml_collections.ConfigDict()  # role -> ops (see frame_transforms.augment_image); {} = none
    c.image_dropout = 0.0  # probability of dropping each camera (one is always kept)
    # Throughput and memory.
    c.shuffle_buffer_size = 100_000  # frames, an upper bound; the RAM budget may lower it
    c.ram_budget_gb = 8.0  # host RAM the pipeline may use (tf.data autotune budget)
    # "files": each host reads its own share of the record files (scales to pods);
    # "replicated": every host reads the whole stream and keeps its rows of each
    # global batch, so batches are the same whatever the number of hosts (tests, small jobs).
    c.host_sharding = "files"
    c.shuffle_ram_fraction = 0.5  # part of the budget for shuffle buffers of encoded frames
    c.read_threads = 8  # files read at once, split over datasets by weight
    c.transform_threads = 16  # map threads, split over datasets by weight
    c.val_batches = 16
    return c
