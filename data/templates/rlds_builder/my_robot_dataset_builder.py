"""RLDS builder template: raw episodes (one ``.npz`` file per episode) -> an RLDS dataset.

Copy this directory, rename ``my_robot`` everywhere (file names, the class name
``MyRobot``, whose snake_case form is the dataset name on disk), and adapt the
places marked ``TODO``. Then build with::

    python my_robot_dataset_builder.py --raw-dir /path/to/raw --data-dir /path/to/rlds

which writes ``/path/to/rlds/my_robot/1.0.0/`` (``dataset_info.json``,
``features.json`` and the tfrecord shards). The raw directory is the builder's
tensorflow-datasets *manual dir*, so the tfds CLI works too where it is
installed with its dependencies (apache-beam)::

    tfds build my_robot_dataset_builder.py --manual_dir /path/to/raw --data_dir /path/to/rlds

Raw layout expected (see ``MANUAL_DOWNLOAD_INSTRUCTIONS``)::

    RAW/train/*.npz    one file per episode
    RAW/val/*.npz      (one directory per entry of SPLITS)

Each ``.npz`` holds the arrays of one episode of ``T`` steps::

    image               uint8   [T, H, W, 3]   primary (third-person) camera
    wrist_image         uint8   [T, H, W, 3]   wrist camera
    state               float32 [T, STATE_DIM]
    action              float32 [T, ACTION_DIM]
    language_instruction  str (a 0-d string array: one instruction per episode)

Every step of the output has exactly the standard features
``observation/{image, wrist_image, state}``, ``action``,
``language_instruction``, ``is_first``, ``is_last``, ``is_terminal``,
``reward``, ``discount``, and every episode ``episode_metadata/file_path``.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

# TODO: the shapes of your data. Every episode is checked against them.
IMAGE_SHAPE = (64, 64, 3)  # (H, W, 3) of every camera image, as stored
STATE_DIM = 8  # e.g. eef position (3) + euler angles (3) + two finger positions (2)
ACTION_DIM = 7  # e.g. eef delta position (3) + delta euler (3) + gripper (1)

# TODO: your cameras: output key under `observation/` -> key of the raw episode.
# Keep the output keys `image` (primary camera) and `wrist_image` if you can;
# the DatasetSpec maps them to the camera roles. Drop the wrist camera if you
# have none; add a third camera (e.g. "image_2") if you have one.
CAMERAS = {"image": "image", "wrist_image": "wrist_image"}

# TODO: the raw key names of the other arrays.
STATE_KEY = "state"
ACTION_KEY = "action"
INSTRUCTION_KEY = "language_instruction"

# TODO: the splits, one raw sub-directory each. With only ("train",), set
# `val_split=None` in the DatasetSpec: training then holds out the last
# `val_fraction` of train for validation.
SPLITS = ("train", "val")

# "jpeg" keeps datasets small (what most Open X-Embodiment datasets use);
# "png" is lossless and about 5-10x larger.
IMAGE_ENCODING = "jpeg"


def _text(value: np.ndarray) -> str:
    """A 0-d (or 1-element) string array of an npz file as a Python str."""
    item = np.asarray(value).reshape(-1)[0].item()
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def load_raw_episode(path: pathlib.Path) -> dict:
    """Reads one raw episode into NumPy arrays with a shared leading time axis.

    TODO: adapt to your raw format. For HDF5 files (h5py, which vla_jax does
    not depend on: ``pip install h5py``), the same function reads::

        import h5py

        with h5py.File(path, "r") as f:
            episode = {
                "image": f["observations/images/front"][()],        # [T, H, W, 3] uint8
                "wrist_image": f["observations/images/wrist"][()],
                "state": f["observations/qpos"][()].astype(np.float32),
                "action": f["action"][()].astype(np.float32),
                "language_instruction": f.attrs["instruction"],      # str or bytes
            }

    (and the glob in ``_split_generators`` looks for ``*.hdf5``). If your
    images are stored encoded (JPEG bytes), decode them here or declare the
    image features with the raw bytes; tfds accepts both.
    """
    with np.load(path, allow_pickle=False) as data:
        episode = {out_key: data[raw_key] for out_key, raw_key in CAMERAS.items()}
        episode["state"] = data[STATE_KEY].astype(np.float32)
        episode["action"] = data[ACTION_KEY].astype(np.float32)
        episode["language_instruction"] = _text(data[INSTRUCTION_KEY])
    return episode


def check_episode(episode: dict, path: pathlib.Path) -> int:
    """Checks shapes and dtypes against the declared features; returns the episode length."""
    length = len(episode["action"])
    if length == 0:
        raise ValueError(f"{path}: episode has no steps")
    expected = {key: (IMAGE_SHAPE, np.uint8) for key in CAMERAS}
    expected["state"] = ((STATE_DIM,), np.float32)
    expected["action"] = ((ACTION_DIM,), np.float32)
    for key, (shape, dtype) in expected.items():
        array = episode[key]
        if array.dtype != dtype or array.shape != (length, *shape):
            raise ValueError(
                f"{path}: {key!r} is {array.dtype}{list(array.shape)}, expected {np.dtype(dtype)}{[length, *shape]}"
            )
    if not episode["language_instruction"]:
        raise ValueError(f"{path}: empty language instruction")
    return length


def episode_steps(episode: dict) -> list[dict]:
    """One episode's arrays -> the list of RLDS step dicts.

    These are demonstrations: every episode ends because the task is done, so
    the last step is terminal and carries reward 1. TODO: if some of your
    episodes were cut off (timeout, operator stop), set ``is_terminal`` False
    on them, and fill ``reward`` from your data if it has one.
    """
    length = len(episode["action"])
    steps = []
    for i in range(length):
        last = i == length - 1
        steps.append(
            {
                "observation": {
                    **{key: episode[key][i] for key in CAMERAS},
                    "state": episode["state"][i],
                },
                "action": episode["action"][i],
                "language_instruction": episode["language_instruction"],
                "is_first": i == 0,
                "is_last": last,
                "is_terminal": last,
                "reward": np.float32(last),
                "discount": np.float32(1.0),
            }
        )
    return steps


class MyRobot(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for my_robot (TODO: rename the class; its snake_case form is the dataset name)."""

    VERSION = tfds.core.Version("1.0.0")  # TODO: bump (and the spec's `version`) whenever the data changes
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # Where tfds looks for optional metadata files (CITATIONS.bib, TAGS.txt);
    # set explicitly so the file also works as a script or imported by path.
    pkg_dir_path = epath.Path(__file__).parent
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the raw episodes in the manual dir, one .npz file per episode, in one sub-directory per split: "
        + ", ".join(f"<manual_dir>/{split}/*.npz" for split in SPLITS)
        + ". Pass it with --raw-dir (this file) or --manual_dir (tfds build)."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        image = tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8, encoding_format=IMAGE_ENCODING)
        return self.dataset_info_from_configs(
            description="TODO: what the robot does, how the data was collected, the action and state layout.",
            features=tfds.features.FeaturesDict(
                {
                    "steps": tfds.features.Dataset(
                        {
                            "observation": tfds.features.FeaturesDict(
                                {
                                    **{key: image for key in CAMERAS},
                                    "state": tfds.features.Tensor(
                                        shape=(STATE_DIM,), dtype=np.float32, doc="TODO: state layout."
                                    ),
                                }
                            ),
                            "action": tfds.features.Tensor(
                                shape=(ACTION_DIM,), dtype=np.float32, doc="TODO: action layout."
                            ),
                            "language_instruction": tfds.features.Text(doc="The task instruction."),
                            "is_first": tfds.features.Scalar(dtype=np.bool_, doc="True on the first step."),
                            "is_last": tfds.features.Scalar(dtype=np.bool_, doc="True on the last step."),
                            "is_terminal": tfds.features.Scalar(
                                dtype=np.bool_, doc="True on the last step if the episode ended in a terminal state."
                            ),
                            "reward": tfds.features.Scalar(dtype=np.float32, doc="1 on the last step of a demo."),
                            "discount": tfds.features.Scalar(dtype=np.float32, doc="Always 1."),
                        }
                    ),
                    "episode_metadata": tfds.features.FeaturesDict(
                        {"file_path": tfds.features.Text(doc="Raw episode file, relative to the raw directory.")}
                    ),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        raw_dir = pathlib.Path(dl_manager.manual_dir)
        generators = {}
        for split in SPLITS:
            files = sorted((raw_dir / split).glob("*.npz"))  # TODO: *.hdf5 for HDF5 files
            if not files:
                raise FileNotFoundError(f"no raw episodes in {raw_dir / split}. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
            generators[split] = self._generate_examples(raw_dir, files)
        return generators

    def _generate_examples(self, raw_dir: pathlib.Path, files: list[pathlib.Path]) -> Iterator[tuple[str, dict]]:
        """Yields ``(key, episode)``; the key is the file's path relative to the raw dir.

        Keys depend only on the raw files, never on the order they are read in
        or on the machine, so rebuilding gives the same dataset, and the
        tfrecord order (tfds orders examples by a hash of the key) is stable.
        """
        for path in files:
            episode = load_raw_episode(path)
            check_episode(episode, path)
            key = path.relative_to(raw_dir).as_posix()
            yield key, {"steps": episode_steps(episode), "episode_metadata": {"file_path": key}}


def build(raw_dir: str | pathlib.Path, data_dir: str | pathlib.Path) -> pathlib.Path:
    """Converts the raw episodes in ``raw_dir`` and returns the built dataset's directory."""
    builder = MyRobot(data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(raw_dir)))
    return pathlib.Path(builder.data_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw-dir", required=True, help="directory holding one sub-directory of .npz files per split")
    parser.add_argument("--data-dir", required=True, help="output tfds data dir; the dataset goes to DATA_DIR/NAME/VER")
    args = parser.parse_args()
    print(build(args.raw_dir, args.data_dir))


if __name__ == "__main__":
    main()
