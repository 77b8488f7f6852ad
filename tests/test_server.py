"""The websocket policy server, its client and wire format, against a small policy and openpi's own client."""

import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from vla_jax.errors import ConfigError, ObservationError
from vla_jax.inference import wire
from vla_jax.inference.client import PolicyClient, PolicyServerError
from vla_jax.inference.server import ERROR_PREFIX, KeyMap, PolicyServer

HORIZON = 3
# openpi's client calls websockets' connect() the pre-17 way.
openpi_warning = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")


def expected_actions(state) -> np.ndarray:
    """The test policy's answer: row ``t`` is ``state * (t + 1)``."""
    state = np.asarray(state, np.float32)
    return state[None, :] * np.arange(1, HORIZON + 1, dtype=np.float32)[:, None]


class EchoPolicy:
    """Actions are a function of ``state``; records the batch sizes it was called with."""

    metadata = {"name": "echo", "action_horizon": HORIZON}

    def __init__(self, sleep_s: float = 0.0):
        self.sleep_s = sleep_s
        self.batch_sizes: list[int] = []

    def check(self, obs: dict) -> None:
        if "state" not in obs:
            raise ObservationError("observation key 'state' is missing")
        state = np.asarray(obs["state"])
        if state.dtype.kind != "f" or state.ndim != 1:
            raise ObservationError(f"observation key 'state' has shape {state.shape}; expected float [S]")
        if not np.all(np.isfinite(state)):
            raise ObservationError("observation key 'state' holds NaN or inf values")

    def infer_batch(self, observations: list[dict]) -> list[dict]:
        self.batch_sizes.append(len(observations))
        if any(obs.get("prompt") == "explode" for obs in observations):
            raise RuntimeError("the model exploded")
        time.sleep(self.sleep_s)
        return [
            {"actions": expected_actions(obs["state"]), "policy_timing": {"infer_ms": 1.5}, "echo": obs.get("prompt")}
            for obs in observations
        ]


@pytest.fixture
def policy():
    return EchoPolicy()


@pytest.fixture
def server(policy):
    with PolicyServer(policy, port=0, max_message_bytes=4096, max_batch_size=4) as s:
        yield s


def good_obs(value: float = 1.0) -> dict:
    return {"state": np.array([value, -value, 0.5], np.float32), "prompt": "pick"}


def raw_connection(port: int, **kwargs):
    """A plain websocket (for malformed requests); the metadata already read."""
    ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, legacy=True, **kwargs)
    assert wire.unpack(ws.recv()) == EchoPolicy.metadata
    return ws


def assert_good_reply(message, value: float = 1.0) -> dict:
    assert isinstance(message, bytes), message
    reply = wire.unpack(message)
    np.testing.assert_array_equal(reply["actions"], expected_actions(good_obs(value)["state"]))
    return reply


# --- metadata, inference, timing ---


def test_metadata_and_infer_with_our_client(server):
    with PolicyClient(port=server.port, connect_timeout_s=5) as client:
        assert client.metadata == EchoPolicy.metadata
        first = client.infer(good_obs(2.0))
        second = client.infer(good_obs(3.0))
    np.testing.assert_array_equal(first["actions"], expected_actions(good_obs(2.0)["state"]))
    np.testing.assert_array_equal(second["actions"], expected_actions(good_obs(3.0)["state"]))
    assert first["actions"].dtype == np.float32 and first["actions"].shape == (HORIZON, 3)
    assert first["policy_timing"] == {"infer_ms": 1.5}
    assert first["echo"] == "pick"
    assert first["server_timing"]["infer_ms"] >= 0 and "prev_total_ms" not in first["server_timing"]
    assert second["server_timing"]["prev_total_ms"] >= first["server_timing"]["infer_ms"]


@openpi_warning
def test_openpi_client_metadata_and_infer(server):
    openpi = pytest.importorskip("openpi_client.websocket_client_policy")
    client = openpi.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    assert client.get_server_metadata() == EchoPolicy.metadata
    obs = good_obs(4.0) | {"image/primary": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)}
    reply = client.infer(obs)
    assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (HORIZON, 3)
    np.testing.assert_array_equal(reply["actions"], expected_actions(obs["state"]))
    with pytest.raises(RuntimeError, match="vla-jax: error: observation key 'state' is missing"):
        client.infer({"prompt": "no state"})
    assert client.infer(good_obs(5.0))["server_timing"]["prev_total_ms"] > 0


def test_healthz(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
        assert response.status == 200
        assert response.read() == b"ok\n"


def test_client_waits_for_a_late_server(policy):
    box = {}

    def start_late():
        time.sleep(0.3)
        box["server"] = PolicyServer(policy, port=port)
        box["server"].start()

    probe = PolicyServer(policy, port=0)
    port = probe.start()
    probe.stop()
    thread = threading.Thread(target=start_late)
    thread.start()
    try:
        with PolicyClient(port=port, connect_timeout_s=10) as client:
            assert client.metadata == EchoPolicy.metadata
    finally:
        thread.join()
        box["server"].stop()
    with pytest.raises(TimeoutError, match="no policy server"):
        PolicyClient(port=port, connect_timeout_s=0.3)


# --- token ---


@openpi_warning
def test_token(policy):
    openpi = pytest.importorskip("openpi_client.websocket_client_policy")
    with PolicyServer(policy, port=0, token="sesame") as server:
        for bad in (None, "wrong"):
            with pytest.raises(InvalidStatus) as info:
                openpi.WebsocketClientPolicy(host="127.0.0.1", port=server.port, api_key=bad)
            assert info.value.response.status_code == 401
            assert b"missing or wrong API key" in info.value.response.body
        with pytest.raises(PolicyServerError, match="HTTP 401: vla-jax: error: missing or wrong API key"):
            PolicyClient(port=server.port, token="wrong", connect_timeout_s=5)
        ok = openpi.WebsocketClientPolicy(host="127.0.0.1", port=server.port, api_key="sesame")
        assert ok.get_server_metadata() == EchoPolicy.metadata
        np.testing.assert_array_equal(ok.infer(good_obs())["actions"], expected_actions(good_obs()["state"]))
        with PolicyClient(port=server.port, token="sesame", connect_timeout_s=5) as ours:
            assert ours.metadata == EchoPolicy.metadata
            np.testing.assert_array_equal(ours.infer(good_obs())["actions"], expected_actions(good_obs()["state"]))


# --- bad requests: an error reply, and the connection goes on ---

BAD_ARRAY = {b"__ndarray__": True, b"data": b"abc", b"dtype": "<f4", b"shape": [2]}
OVERSIZE = wire.pack({"state": np.zeros(1100, np.float32)})  # over the 4096 limit, under the 8192 of websockets


@pytest.mark.parametrize(
    ("request_", "named"),
    [
        ("a text frame", "got a text frame; send the observation as a binary frame holding a msgpack map"),
        (b"\xc1\x00garbage", "bad message: not valid msgpack"),
        (msgpack.packb([1, 2, 3]), "the message is a msgpack list; expected a map of observation keys"),
        (
            msgpack.packb({"state": BAD_ARRAY}),
            "bad message: an ndarray map of dtype '<f4' and shape [2] holds 3 bytes of data; expected 8",
        ),
        (
            msgpack.packb({"state": BAD_ARRAY | {b"dtype": "<x7"}}),
            "bad message: an ndarray map has unknown dtype '<x7'",
        ),
        (
            OVERSIZE,
            f"the message is {len(OVERSIZE)} bytes, over the limit of 4096 bytes (raise the server's max_message_bytes",
        ),
        (wire.pack({"prompt": "x"}), "observation key 'state' is missing"),
        (wire.pack({"state": np.array([1.0, np.nan])}), "observation key 'state' holds NaN or inf values"),
        (
            wire.pack(good_obs() | {"prompt": "explode"}),
            "inference failed: RuntimeError: the model exploded",
        ),
    ],
    ids=["text", "garbage", "list", "data-length", "dtype", "oversize", "missing", "nan", "infer-raises"],
)
def test_bad_request_gets_an_error_reply_then_the_connection_goes_on(server, request_, named):
    with raw_connection(server.port) as ws:
        ws.send(request_)
        reply = ws.recv()
        assert isinstance(reply, str)
        assert reply.startswith(ERROR_PREFIX + named), reply
        ws.send(wire.pack(good_obs(7.0)))
        assert_good_reply(ws.recv(), 7.0)


def test_message_over_twice_the_limit_closes_with_1009(server):
    with raw_connection(server.port) as ws:
        ws.send(b"\x00" * (2 * 4096 + 1))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    with PolicyClient(port=server.port, connect_timeout_s=5) as client:  # the server goes on
        client.infer(good_obs())


def test_our_client_raises_the_error_text(server):
    with PolicyClient(port=server.port, connect_timeout_s=5) as client:
        with pytest.raises(PolicyServerError, match="^vla-jax: error: observation key 'state' is missing$"):
            client.infer({"prompt": "pick"})
        assert client.infer(good_obs())["echo"] == "pick"


# --- many clients, one batching worker ---


def test_concurrent_clients_are_batched_and_get_their_own_answers():
    policy = EchoPolicy(sleep_s=0.02)
    errors: list[BaseException] = []
    clients, requests = 6, 5

    def run_client(port: int, index: int) -> None:
        try:
            with PolicyClient(port=port, connect_timeout_s=5) as client:
                for step in range(requests):
                    state = np.array([index, step, index * 10 + step], np.float32)
                    reply = client.infer({"state": state, "prompt": f"client {index}"})
                    np.testing.assert_array_equal(reply["actions"], expected_actions(state))
                    assert reply["echo"] == f"client {index}"
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    with PolicyServer(policy, port=0, max_batch_size=4) as server:
        threads = [threading.Thread(target=run_client, args=(server.port, i)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert sum(policy.batch_sizes) == clients * requests
    assert max(policy.batch_sizes) > 1, policy.batch_sizes
    assert max(policy.batch_sizes) <= 4, policy.batch_sizes


def test_stop_ends_the_worker_and_frees_the_port(policy):
    server = PolicyServer(policy, port=0)
    port = server.start()
    with pytest.raises(ConfigError, match=f"cannot serve on 127.0.0.1:{port}: "):
        PolicyServer(policy, port=port).start()
    server.stop()
    assert not any(t.name == "vla-jax-inference" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(OSError):
        connect(f"ws://127.0.0.1:{port}", open_timeout=1, legacy=True)


# --- key mapping ---


def test_key_map_presets_and_parse():
    libero = KeyMap.parse("libero")
    assert libero.mapping["image/primary"] == ("observation/image",)
    droid = KeyMap.parse(" droid ")
    obs = droid.apply(
        {
            "observation/exterior_image_1_left": "cam",
            "observation/wrist_image_left": "wrist",
            "observation/joint_position": np.arange(7, dtype=np.float64),
            "observation/gripper_position": np.array([0.5]),
            "prompt": "fold",
            "extra": 1,
        }
    )
    assert obs.keys() == {"image/primary", "image/wrist", "state", "prompt", "extra"}
    np.testing.assert_array_equal(obs["state"], [0, 1, 2, 3, 4, 5, 6, 0.5])
    assert droid.apply({"observation/joint_position": np.zeros(7)}).keys() == set()  # half a state is no state

    custom = KeyMap.parse("state = a + b , image/primary=cam")
    assert custom.mapping == {"state": ("a", "b"), "image/primary": ("cam",)}
    assert KeyMap.parse(custom.spec()) == custom
    np.testing.assert_array_equal(custom.apply({"a": np.ones(2), "b": 3.0})["state"], [1, 1, 3])
    with pytest.raises(ObservationError, match="cannot concatenate 'a' \\(2, 2\\), 'b' \\(1,\\)"):
        custom.apply({"a": np.ones((2, 2)), "b": 3.0})
    for bad in ("state", "state=", "=a", "state=a+", "state=a,state=b", "libro"):
        with pytest.raises(ConfigError, match="key map"):
            KeyMap.parse(bad)
    assert libero.explain("observation key 'state' is missing") == (
        "observation key 'state' is missing (sent as 'observation/state')"
    )
    assert libero.explain("observation key 'prompt' is missing") == "observation key 'prompt' is missing"


@openpi_warning
def test_server_with_droid_key_map(policy):
    openpi = pytest.importorskip("openpi_client.websocket_client_policy")
    with PolicyServer(policy, port=0, key_map="droid") as server:
        client = openpi.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
        joints = np.array([0.1, 0.2], np.float32)
        reply = client.infer(
            {"observation/joint_position": joints, "observation/gripper_position": np.float32(1.0), "prompt": "go"}
        )
        np.testing.assert_array_equal(reply["actions"], expected_actions([0.1, 0.2, 1.0]))
        assert reply["echo"] == "go"
        with pytest.raises(RuntimeError, match="'state' is missing \\(sent as 'observation/joint_position' \\+ "):
            client.infer({"observation/joint_position": joints})


# --- wire format ---


def wire_samples() -> list:
    rng = np.random.default_rng(0)
    return [
        {"image": rng.integers(0, 255, (4, 5, 3), dtype=np.uint8), "state": rng.normal(size=7).astype(np.float32)},
        {"f16": np.arange(6, dtype=np.float16).reshape(2, 3), "big": np.arange(3, dtype=">i4"), "b": np.array([True])},
        {"empty": np.zeros((0, 3), np.int64), "scalar0d": np.array(2.5), "strided": np.arange(10.0)[::3]},
        {"u": np.array(["ab", "c"]), "raw": b"\x00\x01", "nested": [1, "two", {"x": np.int16(-3)}], "f": 1.25},
        {"npscalars": [np.float32(0.1), np.uint8(7), np.bool_(True), np.float64(2.0), np.int64(-(2**40))]},
    ]


def assert_same(a, b) -> None:
    if isinstance(a, np.ndarray | np.generic):
        assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("sample", wire_samples(), ids=lambda s: ",".join(s))
def test_wire_is_byte_compatible_with_openpi(sample):
    openpi = pytest.importorskip("openpi_client.msgpack_numpy")
    ours = wire.pack(sample)
    assert ours == openpi.packb(sample)
    assert ours == openpi.Packer().pack(sample)
    assert_same(wire.unpack(ours), openpi.unpackb(ours))
    assert_same(openpi.unpackb(ours), wire.unpack(openpi.packb(sample)))
    assert_same(wire.unpack(ours), as_sent(sample))


def as_sent(value):
    """``value`` as it comes back: tuples as lists, arrays C-contiguous, ``np.float64`` (a float) as float."""
    if isinstance(value, dict):
        return {k: as_sent(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_sent(v) for v in value]
    if isinstance(value, np.float64):
        return float(value)
    if isinstance(value, np.ndarray):
        return np.array(value, order="C")
    return value


def test_wire_refuses_what_it_cannot_carry():
    for value in (np.array([object()]), np.zeros(2, np.complex64), np.zeros(2, "V4"), np.complex128(1j)):
        with pytest.raises(ValueError, match="cannot be sent"):
            wire.pack({"x": value})
    for dtype in ("|O", "<c8", "|V4"):
        with pytest.raises(ValueError, match="cannot be sent"):
            wire.unpack(msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": dtype, b"shape": [0]}))
    with pytest.raises(ValueError, match="lacks the field b'shape'"):
        wire.unpack(msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4"}))
    with pytest.raises(ValueError, match="not valid msgpack"):
        wire.unpack(b"\x92\x01")  # a 2-list holding only one item
