"""`python -m nitrokms.enclave`: the enclave service's entry point (the image's CMD). It needs no
argument: the image's settings file says everything (see `nitrokms.enclave.config`).

Brings loopback up, starts the recipient key pool (pre-attested keys), the in-enclave KMS CONNECT
proxy (for application code's boto3; the service's own KMS calls open the relay stream directly) and
the RPC server (and its control listener for the credential provider), then prints
`{"event": "ready", "listen": ADDRESS, "control": ADDRESS, "pid": PID}` on stderr. On SIGTERM or
SIGINT it drains requests, wipes the keyring and exits 0. Startup failures exit 1 with one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from nitrokms.enclave.config import Config, log_level, parse_config
from nitrokms.enclave.errors import EnclaveError
from nitrokms.enclave.keypool import RecipientKeyPool
from nitrokms.enclave.keyring import Keyring
from nitrokms.enclave.kms import EnclaveKMS
from nitrokms.enclave.lanes import LaneClassifier
from nitrokms.enclave.network import KMSNetworkPath
from nitrokms.enclave.nsm import NSMClient
from nitrokms.enclave.server import RPCServer, ServerLimits
from nitrokms.enclave.service import EnclaveService

log = logging.getLogger("enclave")

MAX_SWEEP_INTERVAL_S = 60.0


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {"level": record.levelname, "logger": record.name, "message": record.getMessage()}
        )


def _configure_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log_level(config))
    for noisy in ("botocore", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, log_level(config)))


def _limits(config: Config) -> ServerLimits:
    return ServerLimits(
        max_connections=config.max_connections,
        max_in_flight=config.max_in_flight,
        max_frame_bytes=config.max_frame_bytes,
        connection_buffer_bytes=config.connection_buffer_bytes,
        total_buffer_bytes=config.total_buffer_bytes,
        max_bad_requests=config.max_bad_requests,
        request_timeout_s=config.request_timeout_s,
        idle_timeout_s=config.idle_timeout_s,
        send_timeout_s=config.send_timeout_s,
        shutdown_grace_s=config.shutdown_grace_s,
        workers=config.workers,
        local_workers=config.local_workers,
        max_workers_per_connection=config.max_workers_per_connection,
        control_max_connections=config.control_max_connections,
    )


async def _sweep(keyring: Keyring, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        keyring.sweep()


async def serve(config: Config) -> int:
    """Run the service until SIGTERM/SIGINT. Raises EnclaveError/OSError on startup failure."""
    path = KMSNetworkPath(
        config.region,
        endpoint_url=config.endpoint_url,
        relay=config.kms_relay,
        listen_port=config.proxy_port,
    )
    await path.start()
    try:
        return await _serve(config, path)
    finally:
        await path.close()


async def _serve(config: Config, path: KMSNetworkPath) -> int:
    nsm = NSMClient.open()
    pool = RecipientKeyPool(
        size=config.pool_size,
        max_age_s=config.pool_max_age_s,
        max_uses=config.pool_max_uses,
        attestor=lambda *, public_key: nsm.get_attestation_doc(public_key=public_key),
        document_max_age_s=config.pool_document_max_age_s,
    )
    keyring = Keyring(config.max_keys, config.key_ttl_s)
    try:
        kms = EnclaveKMS(
            config.region,
            pool=pool,
            endpoint_url=config.endpoint_url,
            ca_bundle=config.ca_bundle,
            relay=config.kms_relay,  # straight to the relay; the listener serves apps
            max_attempts=config.kms_max_attempts,
        )
        service = EnclaveService(kms=kms, nsm=nsm, keyring=keyring, pool=pool, region=config.region)
        server = RPCServer(
            service.handle,
            _limits(config),
            lane_of=LaneClassifier(keyring),
            on_shutdown=keyring.clear,
        )
        address = await server.start(config.listen)
        control = None
        if config.control_listen is not None:
            control = await server.start_control(config.control_listen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        sweeper = asyncio.ensure_future(
            _sweep(keyring, min(MAX_SWEEP_INTERVAL_S, config.key_ttl_s / 4))
        )
        ready = {
            "event": "ready",
            "listen": str(address),
            "control": None if control is None else str(control),
            "pid": os.getpid(),
        }
        print(json.dumps(ready), file=sys.stderr, flush=True)
        await stop.wait()
        log.info("draining")
        await server.shutdown()
        sweeper.cancel()
        log.info("stopped")
        return 0
    finally:
        keyring.clear()
        pool.close()
        nsm.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    config = parse_config(args)
    if "--show-config" in args:
        print(json.dumps(config.public(), indent=2))
        return 0
    _configure_logging(config)
    try:
        return asyncio.run(serve(config))
    except EnclaveError as exc:
        log.error("cannot start: %s (%s)", exc.message, exc.code)
    except OSError as exc:
        log.error("cannot start: %s", exc)
    return 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
