"""Action-chunk broker and temporal ensembling over a scripted policy."""

import numpy as np
import pytest

from vla_jax.inference.wrappers import ActionChunkBroker, TemporalEnsembler


class ScriptedPolicy:
    """Query ``q`` returns the chunk ``[[100 q + t, -(100 q + t)] for t in range(H)]``."""

    def __init__(self, horizon: int = 4):
        self.horizon, self.calls = horizon, 0

    def infer(self, obs):
        q = self.calls
        self.calls += 1
        t = np.arange(self.horizon, dtype=np.float32)
        actions = np.stack([100 * q + t, -(100 * q + t)], axis=1)
        return {"actions": actions, "valid": True, "policy_timing": {"infer_ms": 1.0}}


def test_the_broker_executes_whole_chunks_then_queries_again():
    policy = ScriptedPolicy(horizon=4)
    broker = ActionChunkBroker(policy)
    got = [broker.infer({})["actions"][0] for _ in range(9)]
    assert got == [0, 1, 2, 3, 100, 101, 102, 103, 200]
    assert policy.calls == 3


def test_the_broker_executes_k_steps_and_reset_requeries():
    policy = ScriptedPolicy(horizon=4)
    broker = ActionChunkBroker(policy, execute_steps=2)
    first = broker.infer({})
    assert first["actions"].tolist() == [0, 0] and first["valid"] and first["policy_timing"] == {"infer_ms": 1.0}
    assert [broker.infer({})["actions"][0] for _ in range(3)] == [1, 100, 101]
    broker.reset()
    assert broker.infer({})["actions"][0] == 200 and policy.calls == 3


def test_the_broker_refuses_more_steps_than_the_chunk_has():
    with pytest.raises(ValueError, match="execute_steps is 5, more than the policy's chunk of 4"):
        ActionChunkBroker(ScriptedPolicy(horizon=4), execute_steps=5).infer({})


def test_ensembling_is_acts_weighted_mean_with_the_oldest_weighted_most():
    decay = 0.5
    ensembler = TemporalEnsembler(ScriptedPolicy(horizon=3), decay=decay)
    outputs = [ensembler.infer({})["actions"][0] for _ in range(4)]
    # Step 2 is covered by query 0 (its row 2: 2), query 1 (row 1: 101) and query 2 (row 0: 200).
    w = np.exp(-decay * np.arange(3))
    assert outputs[2] == pytest.approx((w * [2, 101, 200]).sum() / w.sum(), rel=1e-6)
    assert outputs[0] == 0
    # Step 3: query 0 no longer covers it; queries 1, 2, 3 give 102, 201, 300.
    assert outputs[3] == pytest.approx((w * [102, 201, 300]).sum() / w.sum(), rel=1e-6)
    assert outputs[2] < np.mean([2, 101, 200])  # the oldest (smallest) prediction counts most
    assert len(ensembler._chunks) <= 3


def test_ensembling_reset_and_shape_mismatch():
    policy = ScriptedPolicy(horizon=3)
    ensembler = TemporalEnsembler(policy)
    ensembler.infer({})
    ensembler.reset()
    assert ensembler.infer({})["actions"][0] == 100  # no history: the new chunk's first row
    policy.horizon = 5
    with pytest.raises(ValueError, match=r"chunk of \(5, 2\) after chunks of \(3, 2\)"):
        ensembler.infer({})
