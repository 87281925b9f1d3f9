"""Run under the preload library (`python -m tests.nsm.device_probe`): drives the production
device backend against whatever answers at /dev/nsm and prints one JSON object of observations."""

from __future__ import annotations

import json
import os
import sys
import threading

from nitrokms.enclave.nsm import DeviceTransport, NSMClient, NSMError, _binding


def code_of(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except NSMError as exc:
        return exc.code
    return "ok"


def main() -> int:
    out: dict[str, object] = {}
    with NSMClient.open(backend="device") as client:
        out["repr"] = repr(client)
        desc = client.describe_nsm()
        out["module_id"] = desc.module_id
        out["locked"] = list(desc.locked_pcrs)
        out["pcr4"] = client.describe_pcr(4).data.hex()
        out["extend"] = client.extend_pcr(16, b"probe").hex()
        client.lock_pcr(16)
        out["extend_locked"] = code_of(lambda: client.extend_pcr(16, b"x"))
        out["bad_index"] = code_of(lambda: client.describe_pcr(32))
        out["random_len"] = len(client.get_random())
        doc = client.get_attestation_doc(
            user_data=b"u" * 1024, nonce=b"n" * 1024, public_key=b"k" * 1024
        )
        out["doc"] = doc.hex()
        out["attest_too_big_field"] = code_of(lambda: client.get_attestation_doc(nonce=b"n" * 1025))
        out["request_over_4096"] = code_of(lambda: client.extend_pcr(17, b"x" * 5000))

        results: list[int] = []

        def worker() -> None:
            results.extend(len(client.get_random()) for _ in range(25))

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["threaded"] = results

    dir_fd = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
    at_fd = os.open("/dev/nsm", os.O_RDWR, dir_fd=dir_fd)
    out["openat_works"] = len(_binding.ioctl_exchange(at_fd, b"\x69GetRandom", 12288)) > 256
    os.close(at_fd)
    os.close(dir_fd)
    transport = DeviceTransport.open()
    raw_fd = int(repr(transport).rsplit("fd=", 1)[1].rstrip(")"))
    out["raw_emsgsize"] = code_of(lambda: _binding.ioctl_exchange(raw_fd, b"\x00" * 4097, 12288))
    out["truncated"] = _binding.ioctl_exchange(raw_fd, b"\x69GetRandom", 10).hex()
    transport.close()
    with open(os.devnull, "rb") as fh:
        out["other_files_work"] = fh.read() == b""
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
