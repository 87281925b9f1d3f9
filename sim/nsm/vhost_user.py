"""The simulated NSM as a virtio device (id 33) behind vhost-user, so a guest's own Linux `nsm`
driver binds to it, creates /dev/nsm, and the production ioctl path talks to a real kernel driver.

QEMU's generic `vhost-user-test-device` (virtio-mmio) with `virtio-id=33,num_vqs=1` is the
transport; this process runs the one queue. Linux's driver (drivers/misc/nsm.c) puts each request
on the queue as two chains, the request buffer (device-readable) and then the response buffer
(device-writable, 0x3000 bytes), kicks once, and expects both back in that order, the response's
used length being the reply's size. A single chain holding both is answered the same way. The
request bytes go to `NSMSimulator.exchange` unchanged, so the guest sees the simulator's CBOR.

    python -m nitrokms.sim nsm vhost-user --socket RUN/nsm.sock [--state DIR] [--measurements F]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from nitrokms.enclave.errors import NSMErrorCode
from nitrokms.enclave.nsm import codec
from nitrokms.sim.nsm.server import SimulatedNSM
from nitrokms.sim.nsm.simulator import SimulatorConfigError
from nitrokms.sim.paths import default_nsm_state_dir
from nitrokms.sim.vhost.backend import serve
from nitrokms.sim.vhost.memory import GuestMemory, MemoryAccessError
from nitrokms.sim.vhost.virtqueue import Chain, QueueError, SplitQueue

VIRTIO_ID_NSM = 33
READY_LINE = "nsm.vhost-user listening"

log = logging.getLogger("nitrokms.sim.nsm.vhost")

Exchange = Callable[[bytes], bytes]


class NSMVirtioDevice:
    """The NSM's one virtqueue: request chains answered by `exchange` (an NSMTransport)."""

    num_queues = 1
    features = 0

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self._request: tuple[int, bytes] | None = None  # a request chain awaiting its response
        self.answered = 0

    def process(self, index: int, queue: SplitQueue) -> bool:
        used = False
        for _ in range(queue.size):  # at most one queue's worth per kick: a lying index ends here
            try:
                chain = queue.pop()
            except QueueError as exc:
                log.error("NSM queue: %s", exc)
                if exc.head is None:
                    return used  # the ring itself is unusable; nothing to hand back
                queue.push(exc.head, 0)
                used = True
                continue
            if chain is None:
                return used
            used = self._take(queue, chain) or used
        return used

    def _take(self, queue: SplitQueue, chain: Chain) -> bool:
        memory = queue.memory
        try:
            if chain.readable:
                request = chain.read_all(memory, codec.MAX_REQUEST_BYTES)
                if not chain.writable:
                    return self._hold(queue, chain.head, request)
                queue.push(chain.head, self._answer(memory, chain, request))
                return True
            if self._request is None:
                log.error("NSM queue: a response buffer without a request")
                queue.push(chain.head, 0)
                return True
            head, request = self._request
            self._request = None
            queue.push(head, 0)
            queue.push(chain.head, self._answer(memory, chain, request))
            return True
        except (QueueError, MemoryAccessError) as exc:
            log.error("NSM queue: %s", exc)
            queue.push(chain.head, 0)
            return True

    def _hold(self, queue: SplitQueue, head: int, request: bytes) -> bool:
        dropped = self._request
        self._request = (head, request)
        if dropped is None:
            return False
        log.error("NSM queue: a request without a response buffer; returning it unanswered")
        queue.push(dropped[0], 0)
        return True

    def _answer(self, memory: GuestMemory, chain: Chain, request: bytes) -> int:
        response = self._exchange(request)
        if len(response) > chain.writable_bytes():
            response = codec.encode_response(codec.ErrorResponse(NSMErrorCode.InternalError))
        self.answered += 1
        return chain.write_all(memory, response)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nitrokms.sim nsm vhost-user",
        description="Serve the simulated NSM as virtio device 33 over vhost-user (for QEMU's "
        "vhost-user-test-device,virtio-id=33,num_vqs=1).",
    )
    parser.add_argument("--socket", required=True, type=Path, help="unix socket to listen on")
    parser.add_argument("--state", type=Path, default=None, help="state directory (root key)")
    parser.add_argument("--measurements", type=Path, help="nitro-cli style measurements JSON")
    parser.add_argument("--debug", action="store_true", help="debug-mode enclave: PCR0-2 zero")
    parser.add_argument("--role-arn", help="parent IAM role ARN measured into PCR3")
    parser.add_argument("--region", default="us-east-1", help="region in certificate names")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        nsm = SimulatedNSM(
            args.state or default_nsm_state_dir(),
            measurements=args.measurements,
            debug=args.debug,
            role_arn=args.role_arn,
            region=args.region,
        )
    except (SimulatorConfigError, OSError) as exc:
        print(f"nsm vhost-user: {exc}", file=sys.stderr)
        return 1
    device = NSMVirtioDevice(nsm.simulator.exchange)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def ready() -> None:
        print(f"{READY_LINE} {args.socket} module_id={nsm.simulator.module_id}", flush=True)

    try:
        serve(str(args.socket), device, stop, ready)
    except OSError as exc:
        print(f"nsm vhost-user: {exc}", file=sys.stderr)
        return 1
    log.info("stopped after %d requests", device.answered)
    return 0
