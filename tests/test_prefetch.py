import jax
import numpy as np
import pytest

from vla_jax import sharding
from vla_jax.data import loader


def _batches(count: int, fail_at: int | None = None):
    for i in range(count):
        if i == fail_at:
            raise ValueError(f"episode {i} is broken")
        yield {"x": np.full((8, 3), i, np.float32), "i": np.full((8,), i, np.int32)}


def test_prefetched_global_batches_arrive_in_order_on_the_mesh():
    mesh = sharding.make_mesh({"data": 8})
    out = list(loader.prefetch_global_batches(_batches(5), sharding.batch_sharding(mesh), size=2))
    assert [int(b["i"][0]) for b in out] == [0, 1, 2, 3, 4]
    assert all(isinstance(b["x"], jax.Array) and len(b["x"].sharding.device_set) == 8 for b in out)
    np.testing.assert_array_equal(np.asarray(out[3]["x"]), np.full((8, 3), 3))


def test_an_error_in_the_stream_reaches_the_consumer_after_the_good_batches():
    mesh = sharding.make_mesh({"data": 8})
    stream = loader.prefetch_global_batches(_batches(5, fail_at=2), sharding.batch_sharding(mesh))
    assert int(next(stream)["i"][0]) == 0 and int(next(stream)["i"][0]) == 1
    with pytest.raises(ValueError, match="episode 2 is broken"):
        next(stream)
