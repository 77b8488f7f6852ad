"""A websocket policy server that speaks openpi's policy protocol, so openpi's ``WebsocketClientPolicy`` works with it.

The protocol: a plain websocket with binary msgpack frames (see :mod:`vla_jax.inference.wire`). On connect the
server sends the policy's metadata map; then, strictly in turn, the client sends one observation map and the server
answers with one result map::

    {"actions": float32 [H, A], "policy_timing": {...}, "server_timing": {"infer_ms": ..., "prev_total_ms": ...}, ...}

A bad request gets a text frame starting with ``vla-jax: error: `` (openpi's client raises RuntimeError on it) and
the connection stays open for the next request. ``GET /healthz`` answers 200 without a token.

Requests from all connections share one queue; a single worker thread takes one request, drains whatever else is
waiting (up to ``max_batch_size``) and serves them with one ``policy.infer_batch`` call. Inference never runs on the
event loop, so keepalive pings are answered during long inference.

Size limits: a message up to ``max_message_bytes`` is served; one up to twice that gets an error reply naming the
size; above that websockets closes the connection with code 1009 (message too big) before reading it all, which
bounds the memory a client can make the server allocate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import http
import logging
import queue
import signal
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from vla_jax.errors import ConfigError, ObservationError
from vla_jax.inference import wire

log = logging.getLogger(__name__)

ERROR_PREFIX = "vla-jax: error: "
HEALTH_PATH = "/healthz"


class ServedPolicy(Protocol):
    """What the server needs from a policy (``vla_jax.inference.policy.Policy`` implements it)."""

    @property
    def metadata(self) -> dict: ...

    def check(self, obs: dict) -> None: ...

    def infer_batch(self, observations: list[dict]) -> list[dict]: ...


# --- key mapping ---------------------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, str | tuple[str, ...]]] = {
    "libero": {
        "image/primary": "observation/image",
        "image/wrist": "observation/wrist_image",
        "state": "observation/state",
        "prompt": "prompt",
    },
    "droid": {
        "image/primary": "observation/exterior_image_1_left",
        "image/wrist": "observation/wrist_image_left",
        "state": ("observation/joint_position", "observation/gripper_position"),
        "prompt": "prompt",
    },
}


class KeyMap:
    """Renames a client's observation keys to ours: each of our keys comes from one of theirs, or from several
    whose arrays are concatenated along the last axis. Keys not named pass through unchanged."""

    def __init__(self, mapping: Mapping[str, str | Sequence[str]]):
        self.mapping: dict[str, tuple[str, ...]] = {
            ours: (theirs,) if isinstance(theirs, str) else tuple(theirs) for ours, theirs in mapping.items()
        }
        self._theirs = {t for names in self.mapping.values() for t in names}

    def __repr__(self) -> str:
        return f"KeyMap({self.spec()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyMap) and self.mapping == other.mapping

    def spec(self) -> str:
        """The ``ours=theirs,ours=theirs1+theirs2`` text that :meth:`parse` reads back."""
        return ",".join(f"{ours}={'+'.join(theirs)}" for ours, theirs in self.mapping.items())

    @classmethod
    def parse(cls, text: str) -> KeyMap:
        """A preset name (``libero``, ``droid``) or ``ours=theirs,ours=theirs1+theirs2``; ConfigError if malformed."""
        text = text.strip()
        if text in PRESETS:
            return cls(PRESETS[text])
        mapping: dict[str, tuple[str, ...]] = {}
        for item in text.split(","):
            ours, sep, theirs = (part.strip() for part in item.partition("="))
            names = tuple(name.strip() for name in theirs.split("+"))
            if not sep or not ours or not all(names):
                raise ConfigError(
                    f"key map {text!r}: {item.strip()!r} is not 'ours=theirs' or 'ours=theirs1+theirs2' "
                    f"(or use a preset: {', '.join(PRESETS)})"
                )
            if ours in mapping:
                raise ConfigError(f"key map {text!r}: key {ours!r} is mapped twice")
            mapping[ours] = names
        return cls(mapping)

    def apply(self, request: dict) -> dict:
        """The request with our key names; a mapped key whose source keys are missing is left missing."""
        out = {k: v for k, v in request.items() if k not in self._theirs}
        for ours, theirs in self.mapping.items():
            if all(name in request for name in theirs):
                out[ours] = request[theirs[0]] if len(theirs) == 1 else _concat(ours, theirs, request)
        return out

    def explain(self, message: str) -> str:
        """``message`` (about our keys) with the client's name of the key it is about appended, if that was mapped."""
        found = [(message.find(f"'{ours}'"), ours) for ours, theirs in self.mapping.items() if theirs != (ours,)]
        found = [(at, ours) for at, ours in found if at >= 0]
        if not found:
            return message
        ours = min(found)[1]
        return f"{message} (sent as {' + '.join(repr(name) for name in self.mapping[ours])})"


def _concat(ours: str, theirs: tuple[str, ...], request: dict) -> np.ndarray:
    parts = [np.atleast_1d(np.asarray(request[name])) for name in theirs]
    try:
        return np.concatenate(parts, axis=-1)
    except ValueError as e:
        shapes = ", ".join(f"{name!r} {part.shape}" for name, part in zip(theirs, parts))
        raise ObservationError(f"observation key {ours!r}: cannot concatenate {shapes} along the last axis: {e}") from e


def _key_map(key_map: KeyMap | str | Mapping | None) -> KeyMap | None:
    if key_map is None or isinstance(key_map, KeyMap):
        return key_map
    if isinstance(key_map, str):
        return KeyMap.parse(key_map)
    return KeyMap(key_map)


# --- the inference worker ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Job:
    """One checked observation waiting for inference, and where its answer goes."""

    obs: dict
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclasses.dataclass
class _Answer:
    result: dict | None
    error: str | None
    infer_ms: float


def _settle(future: asyncio.Future, answer: _Answer) -> None:
    if not future.done():  # the connection may have gone away meanwhile
        future.set_result(answer)


class _Worker:
    """The one thread that calls ``policy.infer_batch``, on batches drained from a shared queue."""

    def __init__(self, policy: ServedPolicy, max_batch_size: int):
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="vla-jax-inference", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Serves what is already queued, then ends the thread."""
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch, stopping = self._drain(first)
            self._serve(batch)
            if stopping:
                return

    def _drain(self, first: _Job) -> tuple[list[_Job], bool]:
        batch = [first]
        while len(batch) < self.max_batch_size:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _serve(self, batch: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            results = self.policy.infer_batch([job.obs for job in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"infer_batch returned {len(results)} results for {len(batch)} observations")
            answers = [_Answer(result, None, 0.0) for result in results]
        except Exception as e:
            log.error("inference failed on a batch of %d:\n%s", len(batch), traceback.format_exc())
            error = f"inference failed: {type(e).__name__}: {e}"
            answers = [_Answer(None, error, 0.0) for _ in batch]
        infer_ms = (time.perf_counter() - start) * 1000
        for job, answer in zip(batch, answers):
            answer.infer_ms = infer_ms
            with contextlib.suppress(RuntimeError):  # RuntimeError: the event loop is closed, nobody is waiting
                job.loop.call_soon_threadsafe(_settle, job.future, answer)


# --- the server ----------------------------------------------------------------------------------------------------


class _BadRequest(Exception):
    """A request that gets an error reply (its message is the reply's text after the prefix)."""


class PolicyServer:
    """Serves ``policy`` over websockets: ``serve_forever()`` for the CLI, ``start()``/``stop()`` or ``with`` in a
    process that does other things (tests, benchmarks)."""

    def __init__(
        self,
        policy: ServedPolicy,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        token: str | None = None,
        max_message_bytes: int = 32 * 2**20,
        max_batch_size: int = 8,
        key_map: KeyMap | str | Mapping | None = None,
    ):
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size is {max_batch_size}; expected at least 1")
        if max_message_bytes < 1:
            raise ConfigError(f"max_message_bytes is {max_message_bytes}; expected at least 1")
        self.policy = policy
        self.host = host
        self.port = port
        self.token = token or None
        self.max_message_bytes = max_message_bytes
        self.max_batch_size = max_batch_size
        self.key_map = _key_map(key_map)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._worker: _Worker | None = None

    # --- lifecycle ---

    def serve_forever(self) -> None:
        """Serves in this thread until SIGINT or SIGTERM (or :meth:`stop` from another thread)."""
        asyncio.run(self._main(on_ready=None, signals=threading.current_thread() is threading.main_thread()))

    def start(self) -> int:
        """Serves from a background thread; returns the bound port (``port=0`` picks a free one)."""
        if self._thread is not None:
            raise RuntimeError("the policy server is already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._main(on_ready=ready.set, signals=False))
            except BaseException as e:
                if ready.is_set():
                    log.exception("the policy server failed")
                else:
                    failure.append(e)
                    ready.set()

        self._thread = threading.Thread(target=run, name="vla-jax-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self.port

    def stop(self) -> None:
        """Closes every connection, lets queued inference finish, ends the worker and the server thread."""
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(event.set)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def __enter__(self) -> PolicyServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _main(self, on_ready: Any, signals: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stop_event.set)
        worker = self._worker = _Worker(self.policy, self.max_batch_size)
        worker.start()
        try:
            server = serve(
                self._handle,
                self.host,
                self.port,
                process_request=self._process_request,
                compression=None,
                max_size=2 * self.max_message_bytes,
            )
            try:
                await server  # binds the socket
            except OSError as e:
                raise ConfigError(f"cannot serve on {self.host}:{self.port}: {e.strerror or e}") from e
            async with server:
                self.port = server.sockets[0].getsockname()[1]
                log.info("policy server listening on ws://%s:%d", self.host, self.port)
                if on_ready is not None:
                    on_ready()
                await self._stop_event.wait()
                log.info("policy server stopping")
        finally:
            # Leaving ``serve`` closed the connections and waited for their handlers (the worker served them).
            await asyncio.to_thread(worker.stop)
            self._worker = None
            self._loop = None
            self._stop_event = None
        log.info("policy server stopped")

    # --- HTTP: health check and token ---

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if self.token is not None:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Api-Key {self.token}".encode()):
                log.warning("refused a connection from %s: missing or wrong API key", _peer(connection))
                reason = "missing or wrong API key; send the header 'Authorization: Api-Key <token>'"
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, f"{ERROR_PREFIX}{reason}\n")
        return None

    # --- websocket: one connection ---

    async def _handle(self, ws: ServerConnection) -> None:
        peer = _peer(ws)
        log.info("connection opened: %s", peer)
        served = 0
        try:
            await ws.send(wire.pack(self.policy.metadata))
            prev_total_ms: float | None = None
            async for message in ws:
                start = time.perf_counter()
                await ws.send(await self._reply(message, prev_total_ms, peer))
                prev_total_ms = (time.perf_counter() - start) * 1000
                served += 1
        except ConnectionClosed:
            pass
        finally:
            log.info("connection closed: %s (%d requests, close code %s)", peer, served, ws.close_code)

    async def _reply(self, message: str | bytes, prev_total_ms: float | None, peer: str) -> bytes | str:
        """The reply to one request: a binary result, or a text error."""
        try:
            obs = self._observation(message)
            answer = await self._infer(obs)
            if answer.error is not None:
                raise _BadRequest(answer.error)
            timing = {"infer_ms": answer.infer_ms}
            if prev_total_ms is not None:
                timing["prev_total_ms"] = prev_total_ms
            return self._encode_result(answer.result, timing)
        except _BadRequest as e:
            log.warning("error reply to %s: %s", peer, e)
            return f"{ERROR_PREFIX}{e}"
        except Exception as e:  # a bug here must not take the connection down
            log.error("internal error serving %s:\n%s", peer, traceback.format_exc())
            return f"{ERROR_PREFIX}internal server error: {type(e).__name__}: {e}"

    def _observation(self, message: str | bytes) -> dict:
        """The request as a checked observation with our key names; _BadRequest otherwise."""
        if isinstance(message, str):
            raise _BadRequest("got a text frame; send the observation as a binary frame holding a msgpack map")
        if len(message) > self.max_message_bytes:
            raise _BadRequest(
                f"the message is {len(message)} bytes, over the limit of {self.max_message_bytes} bytes "
                "(raise the server's max_message_bytes to accept it)"
            )
        try:
            request = wire.unpack(message)
        except ValueError as e:
            raise _BadRequest(f"bad message: {e}") from e
        if not isinstance(request, dict):
            raise _BadRequest(f"the message is a msgpack {type(request).__name__}; expected a map of observation keys")
        try:
            obs = self.key_map.apply(request) if self.key_map is not None else request
            self.policy.check(obs)
        except ObservationError as e:
            text = str(e)
            raise _BadRequest(self.key_map.explain(text) if self.key_map is not None else text) from e
        except Exception as e:
            log.error("policy.check failed:\n%s", traceback.format_exc())
            raise _BadRequest(f"checking the observation failed: {type(e).__name__}: {e}") from e
        return obs

    async def _infer(self, obs: dict) -> _Answer:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        assert self._worker is not None
        self._worker.queue.put(_Job(obs, future, loop))
        return await future

    def _encode_result(self, result: Any, timing: dict) -> bytes:
        if not isinstance(result, dict):
            raise _BadRequest(f"the policy returned a {type(result).__name__}; expected a dict")
        reply = dict(result)
        reply["server_timing"] = timing
        try:
            return wire.pack(reply)
        except (TypeError, ValueError) as e:
            log.error("cannot encode a policy result: %s", e)
            raise _BadRequest(f"cannot encode the policy's result: {e}") from e


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
