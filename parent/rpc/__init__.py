"""The parent's RPC client for the enclave service: asyncio (`AsyncEnclaveClient`) and blocking
(`EnclaveClient`), with typed results (proto's result dataclasses) and typed errors."""

from nitrokms.parent.rpc.client import AsyncEnclaveClient, Backoff
from nitrokms.parent.rpc.endpoint import enclave_address
from nitrokms.parent.rpc.errors import (
    AccessDeniedError,
    BrokenStreamError,
    CredentialsError,
    DecryptionFailedError,
    InvalidRequestError,
    KMSError,
    NSMError,
    ProtocolViolationError,
    RemoteError,
    RPCConnectionError,
    RPCError,
    RPCTimeoutError,
)
from nitrokms.parent.rpc.sync import EnclaveClient

__all__ = [
    "AccessDeniedError",
    "AsyncEnclaveClient",
    "Backoff",
    "BrokenStreamError",
    "CredentialsError",
    "DecryptionFailedError",
    "EnclaveClient",
    "InvalidRequestError",
    "KMSError",
    "NSMError",
    "ProtocolViolationError",
    "RPCConnectionError",
    "RPCError",
    "RPCTimeoutError",
    "RemoteError",
    "enclave_address",
]
