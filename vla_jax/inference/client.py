"""A small synchronous client for :class:`vla_jax.inference.server.PolicyServer` (or any openpi policy server).

``PolicyClient(host, port).infer(obs)``: unlike openpi's ``WebsocketClientPolicy`` it keeps retrying the
connection until ``connect_timeout_s`` (a robot often starts before its policy server is up), and raises
:class:`PolicyServerError` with the server's own text when a request is refused.
"""

from __future__ import annotations

import logging
import time

from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from vla_jax.inference import wire

log = logging.getLogger(__name__)

_RETRY_S = 0.25


class PolicyServerError(RuntimeError):
    """The policy server refused a request or the connection (its reason is the message)."""


def _uri(host: str, port: int) -> str:
    if host.startswith(("ws://", "wss://")):
        return host
    return f"ws://{host}:{port}"


def _rejection(uri: str, error: InvalidStatus) -> PolicyServerError:
    response = error.response
    body = response.body.decode("utf-8", errors="replace").strip() if response.body else ""
    reason = f": {body}" if body else ""
    return PolicyServerError(
        f"the policy server at {uri} refused the connection with HTTP {response.status_code}{reason}"
    )


class PolicyClient:
    """One connection to a policy server: ``.metadata`` from the handshake, then ``infer(obs)`` in turn."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        token: str | None = None,
        connect_timeout_s: float = 30.0,
    ):
        self.uri = _uri(host, port)
        headers = {"Authorization": f"Api-Key {token}"} if token else None
        self._ws = self._connect(headers, connect_timeout_s)
        self.metadata: dict = self._read_metadata()

    def _connect(self, headers: dict | None, timeout_s: float) -> ClientConnection:
        """Connects, retrying while the server is not up yet; PolicyServerError if it refuses, TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                return connect(
                    self.uri,
                    compression=None,
                    max_size=None,
                    additional_headers=headers,
                    open_timeout=max(left, _RETRY_S),
                    legacy=True,  # return the connection itself; this object manages its lifetime
                )
            except InvalidStatus as e:
                if e.response.status_code != 503:  # 503: the server is shutting down or starting; retry
                    raise _rejection(self.uri, e) from e
                error: Exception = e
            except (OSError, TimeoutError) as e:
                error = e
            if time.monotonic() + _RETRY_S > deadline:
                raise TimeoutError(f"no policy server at {self.uri} after {timeout_s:g} s: {error}") from error
            log.debug("waiting for the policy server at %s: %s", self.uri, error)
            time.sleep(_RETRY_S)

    def _read_metadata(self) -> dict:
        message = self._ws.recv()
        if isinstance(message, str):
            self._ws.close()
            raise PolicyServerError(message)
        return wire.unpack(message)

    def infer(self, obs: dict) -> dict:
        """The server's result for one observation; PolicyServerError with the server's text if it refused it."""
        self._ws.send(wire.pack(obs))
        message = self._ws.recv()
        if isinstance(message, str):
            raise PolicyServerError(message)
        return wire.unpack(message)

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
