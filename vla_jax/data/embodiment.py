"""What a policy needs to know to act for each dataset's robot, saved with every checkpoint.

Training sees every dataset in one normalized, padded form; a robot needs its
own: its action dims in its units and gripper convention, at the rate the
chunks were trained at. An :class:`Embodiment` records that for one dataset of
the mixture, so a checkpoint or release can be run without the dataset specs
or the data on disk.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vla_jax.data.specs import ACTION_SPACES, GRIPPER_TO_CANONICAL


@dataclasses.dataclass(frozen=True)
class Embodiment:
    """One dataset's robot as the policy sees it.

    ``cameras`` and ``depth_cameras`` are the roles of the run's cameras that
    this dataset has (the others were always masked in training);
    ``control_hz`` is the rate of the action chunks (after resampling).
    """

    dataset: str
    dataset_index: int
    action_space: str
    action_space_id: int
    action_dims: tuple[str, ...]
    gripper_dims: tuple[int, ...]
    gripper_convention: str
    control_hz: float
    cameras: tuple[str, ...]
    depth_cameras: tuple[str, ...]
    state_dim: int

    @property
    def action_dim(self) -> int:
        return len(self.action_dims)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Embodiment:
        fields = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        for key in ("action_dims", "gripper_dims", "cameras", "depth_cameras"):
            fields[key] = tuple(fields[key])
        return cls(**fields)

    def gripper_to_dataset(self, actions: np.ndarray) -> np.ndarray:
        """Inverts the pipeline's gripper mapping: canonical 1=open/0=closed back to the dataset's convention."""
        if not self.gripper_dims:
            return actions
        scale, offset = GRIPPER_TO_CANONICAL[self.gripper_convention]
        out = np.array(actions, copy=True)
        dims = list(self.gripper_dims)
        out[..., dims] = (out[..., dims] - offset) / scale
        return out


def embodiments(mix, data_config) -> dict[str, Embodiment]:
    """The :class:`Embodiment` of every dataset of an opened mixture (``loader.DataMixture``), by name."""
    found = {}
    for index, source in enumerate(mix.sources):
        spec = source.spec
        found[spec.name] = Embodiment(
            dataset=spec.name,
            dataset_index=index,
            action_space=ACTION_SPACES[spec.action_space_id].name,
            action_space_id=spec.action_space_id,
            action_dims=tuple(spec.action_dims),
            gripper_dims=tuple(spec.gripper_dims),
            gripper_convention=spec.gripper_convention,
            control_hz=float(spec.control_frequency_hz / source.stride),
            cameras=tuple(role for role in data_config.cameras if role in spec.cameras),
            depth_cameras=tuple(role for role in data_config.depth_cameras if role in spec.depth_cameras),
            state_dim=len(source.statistics.state.mean),
        )
    return found
