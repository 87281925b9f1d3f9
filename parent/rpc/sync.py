"""The blocking RPC client: the asyncio client run on a private event-loop thread.

One loop thread per client owns the connection, so the blocking API keeps every property of the
async one (one read loop, many requests in flight, out-of-order replies) and any number of threads
can share a client: each call is submitted to the loop and the calling thread waits for its result.
Each operation is the async method itself, wrapped by `_blocking`, so the two APIs cannot drift:
same arguments, defaults, timeouts, results and errors.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from nitrokms.parent.rpc.client import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    AsyncEnclaveClient,
    Backoff,
)
from nitrokms.parent.rpc.errors import CLIENT_CLOSED, RPCConnectionError
from nitrokms.proto.addresses import Address

T = TypeVar("T")
P = ParamSpec("P")


def _blocking(
    method: Callable[Concatenate[AsyncEnclaveClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[EnclaveClient, P], T]:
    """The blocking twin of an AsyncEnclaveClient method: run it on the client's loop, wait."""

    @functools.wraps(method)
    def blocking(self: EnclaveClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self._async, *args, **kwargs))

    blocking.__module__ = __name__
    blocking.__qualname__ = f"EnclaveClient.{method.__name__}"
    return blocking


class EnclaveClient:
    """Blocking twin of AsyncEnclaveClient: same methods, same errors, thread-safe."""

    def __init__(
        self,
        address: str | Address,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        backoff: Backoff | None = None,
    ) -> None:
        self._async = AsyncEnclaveClient(
            address, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, backoff=backoff
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="nitrokms-rpc", daemon=True
        )
        self._thread.start()
        self._close_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"EnclaveClient({str(self.address)!r})"

    @property
    def address(self) -> Address:
        return self._async.address

    @property
    def connections_opened(self) -> int:
        return self._async.connections_opened

    def __enter__(self) -> EnclaveClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop the loop thread. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._async.aclose(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RPCConnectionError("the client is closed", code=CLIENT_CLOSED)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop closed under us: close() raced this call
            coro.close()
            raise RPCConnectionError("the client is closed", code=CLIENT_CLOSED) from None
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    # --- operations: AsyncEnclaveClient's own, blocking (see it for arguments and errors) -----

    set_credentials = _blocking(AsyncEnclaveClient.set_credentials)
    generate_data_key = _blocking(AsyncEnclaveClient.generate_data_key)
    load_data_key = _blocking(AsyncEnclaveClient.load_data_key)
    forget_key = _blocking(AsyncEnclaveClient.forget_key)
    seal = _blocking(AsyncEnclaveClient.seal)
    unseal = _blocking(AsyncEnclaveClient.unseal)
    unseal_result = _blocking(AsyncEnclaveClient.unseal_result)
    attest = _blocking(AsyncEnclaveClient.attest)
    describe = _blocking(AsyncEnclaveClient.describe)
    health = _blocking(AsyncEnclaveClient.health)
    call = _blocking(AsyncEnclaveClient.call)
