"""Parent-instance side: the vsock relay, the credential provider and the enclave RPC client."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nitrokms")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"
