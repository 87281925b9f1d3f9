"""NSMClient behaviour over fake transports, the cffi binding, and the libnsm backend."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cffi import FFI
from nitrokms.enclave.nsm import (
    DeviceTransport,
    LibNSMBackend,
    NSMClient,
    NSMDescription,
    NSMError,
    NSMErrorCode,
    NSMUnavailableError,
    PCRState,
    TransportBackend,
    _binding,
    codec,
)


class ScriptedTransport:
    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sent: list[bytes] = []

    def exchange(self, request: bytes) -> bytes:
        self.sent.append(request)
        return self.reply


def test_client_sends_the_encoded_request_and_returns_the_result() -> None:
    transport = ScriptedTransport(codec.encode_response(codec.ExtendPCRResponse(b"\x01" * 48)))
    client = NSMClient(TransportBackend(transport))
    assert client.extend_pcr(16, b"abc") == b"\x01" * 48
    assert transport.sent == [codec.encode_request(codec.ExtendPCRRequest(16, b"abc"))]


def test_error_reply_becomes_nsm_error_with_namespaced_code() -> None:
    client = NSMClient(TransportBackend(ScriptedTransport(cbor2.dumps({"Error": "ReadOnlyIndex"}))))
    with pytest.raises(NSMError) as info:
        client.lock_pcr(3)
    assert info.value.code == "nsm.ReadOnlyIndex"
    assert "LockPCR" in str(info.value)


def test_mismatched_reply_is_invalid_response() -> None:
    client = NSMClient(TransportBackend(ScriptedTransport(cbor2.dumps("LockPCR"))))
    with pytest.raises(NSMError) as info:
        client.get_random()
    assert info.value.nsm_code is NSMErrorCode.InvalidResponse


def test_garbage_reply_is_internal_error() -> None:
    client = NSMClient(TransportBackend(ScriptedTransport(b"\xff\xff")))
    with pytest.raises(NSMError) as info:
        client.describe_nsm()
    assert info.value.nsm_code is NSMErrorCode.InternalError


@pytest.mark.parametrize("bad", [-1, 65536, 1.0, "3", None])
def test_client_refuses_bad_indexes_before_sending(bad: object) -> None:
    transport = ScriptedTransport(b"")
    client = NSMClient(TransportBackend(transport))
    with pytest.raises(NSMError) as info:
        client.describe_pcr(bad)  # type: ignore[arg-type]
    assert info.value.nsm_code is NSMErrorCode.InvalidArgument
    assert transport.sent == []


def test_client_refuses_non_bytes_attestation_fields() -> None:
    client = NSMClient(TransportBackend(ScriptedTransport(b"")))
    with pytest.raises(NSMError):
        client.get_attestation_doc(nonce="abc")  # type: ignore[arg-type]


def test_missing_device_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(NSMUnavailableError) as info:
        NSMClient.open(str(tmp_path / "nsm"))
    assert info.value.code == "nsm.Unavailable"
    assert "nsm" in info.value.message


def test_oversize_request_is_refused_before_the_ioctl() -> None:
    fd = os.open(os.devnull, os.O_RDWR)
    transport = DeviceTransport(fd, os.devnull)
    try:
        with pytest.raises(NSMError) as big:
            transport.exchange(b"\x00" * 4097)
        assert big.value.nsm_code is NSMErrorCode.InputTooLarge
        with pytest.raises(NSMError) as notty:
            transport.exchange(b"\x00")
        assert notty.value.nsm_code is NSMErrorCode.InternalError
    finally:
        transport.close()
    with pytest.raises(NSMUnavailableError):
        transport.exchange(b"\x00")


def test_check_maps_errno_and_error_codes() -> None:
    _binding.check(0, what="x")
    cases = [
        ((-1, errno.EMSGSIZE), NSMErrorCode.InputTooLarge),
        ((-1, errno.ETIMEDOUT), NSMErrorCode.InternalError),
        ((4, 0), NSMErrorCode.ReadOnlyIndex),
        ((99, 0), NSMErrorCode.InternalError),
    ]
    for (rc, err), expected in cases:
        with pytest.raises(NSMError) as info:
            _binding.check(rc, errno=err, what="x")
        assert info.value.nsm_code is expected


def test_nsm_description_layout_matches_libnsm() -> None:
    assert _binding.layout() == {
        "version_major": 0, "version_minor": 2, "version_patch": 4, "module_id": 6,
        "module_id_len": 108, "max_pcrs": 112, "locked_pcrs": 114, "locked_pcrs_len": 244,
        "digest": 248, "sizeof": 252,
    }  # fmt: skip


def test_explicit_libnsm_that_cannot_load_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NITROKMS_LIBNSM", str(tmp_path / "libnsm.so"))
    with pytest.raises(NSMUnavailableError, match="libnsm"):
        NSMClient.open(backend="libnsm")


def test_auto_falls_back_to_the_device_when_libnsm_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NITROKMS_LIBNSM", str(tmp_path / "libnsm.so"))
    monkeypatch.setattr(DeviceTransport, "open", classmethod(lambda cls, path: cls(-1, path)))
    client = NSMClient.open()
    assert "DeviceTransport(path='/dev/nsm'" in repr(client)


@pytest.fixture(scope="module")
def libnsm_standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("libnsm") / "libnsm.so"
    source = Path(__file__).with_name("libnsm_standin.c")
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(out), str(source)],
        check=True,
    )
    return out


def test_libnsm_backend_through_cffi(libnsm_standin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NITROKMS_LIBNSM", str(libnsm_standin))
    with NSMClient.open() as client:
        assert "LibNSMBackend" in repr(client)
        assert client.describe_nsm() == NSMDescription(
            1, 2, 3, "i-0123456789abcdef0-enc0123456789abcdef", 32, tuple(range(16)), "SHA384"
        )
        assert client.describe_pcr(17) == PCRState(False, bytes([17]) * 48)
        assert client.get_random() == b"\x5a" * 256
        assert client.extend_pcr(20, b"\x09abc") == b"\x09" * 48
        client.lock_pcr(20)
        client.lock_pcrs(32)
        assert client.get_attestation_doc(nonce=b"", public_key=b"pk") == b"NL\x00L\x02pk"
        for call, code in [
            (lambda: client.describe_pcr(40), NSMErrorCode.InvalidIndex),
            (lambda: client.extend_pcr(3, b"x"), NSMErrorCode.ReadOnlyIndex),
            (lambda: client.lock_pcrs(33), NSMErrorCode.InvalidIndex),
        ]:
            with pytest.raises(NSMError) as info:
                call()
            assert info.value.nsm_code is code
    backend = LibNSMBackend.load(str(libnsm_standin))
    assert isinstance(backend, LibNSMBackend)
    backend.close()


@pytest.fixture
def reported_len(libnsm_standin: Path) -> Iterator[Any]:
    """The stand-in's `standin_reported_len`: non-zero makes it claim that reply length."""
    ffi = FFI()
    ffi.cdef("extern uint32_t standin_reported_len;")
    lib = ffi.dlopen(str(libnsm_standin))  # the same loaded library the backend uses
    yield lib
    lib.standin_reported_len = 0


def test_libnsm_reply_longer_than_the_buffer_raises_like_the_ioctl(
    libnsm_standin: Path, reported_len: Any
) -> None:
    backend = LibNSMBackend.load(str(libnsm_standin))
    client = NSMClient(backend)
    reported_len.standin_reported_len = 16 * 1024 + 1  # above every buffer the backend passes
    for call in (
        client.describe_nsm,
        lambda: client.describe_pcr(17),
        lambda: client.extend_pcr(20, b"x"),
        client.get_random,
        lambda: client.get_attestation_doc(nonce=b"n"),
    ):
        with pytest.raises(NSMError) as info:
            call()
        assert info.value.nsm_code is NSMErrorCode.InternalError
        assert "16385-byte reply" in info.value.message
    reported_len.standin_reported_len = 64  # exactly the PCR buffer: read whole, not refused
    assert client.describe_pcr(17) == PCRState(False, bytes([17]) * 48 + bytes(16))
    client.close()
