"""The only module that touches cffi: declarations, library handles and return-code checks.

ABI mode (no compiler in the enclave image). Two C surfaces are declared: libc's `ioctl` with the
NSM driver's `struct nsm_raw` (spec 1.1), and AWS libnsm's C API (spec 2). Every return code from
either goes through `check()`, which turns it into NSMError, and every reply length either writes
back goes through `reply_length()`, which refuses one longer than the buffer it was given.
"""

from __future__ import annotations

import errno as errno_codes
import os
import threading
from typing import Any

from cffi import FFI
from nitrokms.enclave.errors import NSMError, NSMErrorCode, NSMUnavailableError

NSM_IOCTL_RAW = 0xC0200A00
LIBNSM_ENV = "NITROKMS_LIBNSM"
LIBNSM_NAME = "libnsm.so"
MODULE_ID_CAPACITY = 100  # NsmDescription.module_id[100]; libnsm writes at most 99 and a NUL
LOCKED_PCRS_CAPACITY = 64  # NsmDescription.locked_pcrs[64]

ffi = FFI()
ffi.cdef(
    """
    struct nsm_iovec { uint64_t addr; uint64_t len; };
    struct nsm_raw { struct nsm_iovec request; struct nsm_iovec response; };
    int ioctl(int fd, unsigned long request, ...);

    typedef enum {
        ERROR_CODE_SUCCESS = 0, ERROR_CODE_INVALID_ARGUMENT = 1, ERROR_CODE_INVALID_INDEX = 2,
        ERROR_CODE_INVALID_RESPONSE = 3, ERROR_CODE_READ_ONLY_INDEX = 4,
        ERROR_CODE_INVALID_OPERATION = 5, ERROR_CODE_BUFFER_TOO_SMALL = 6,
        ERROR_CODE_INPUT_TOO_LARGE = 7, ERROR_CODE_INTERNAL_ERROR = 8
    } ErrorCode;
    typedef enum { DIGEST_SHA256 = 0, DIGEST_SHA384 = 1, DIGEST_SHA512 = 2 } Digest;
    typedef struct {
        uint16_t version_major; uint16_t version_minor; uint16_t version_patch;
        uint8_t module_id[100]; uint32_t module_id_len; uint16_t max_pcrs;
        uint16_t locked_pcrs[64]; uint32_t locked_pcrs_len; Digest digest;
    } NsmDescription;
    int32_t nsm_lib_init(void);
    void nsm_lib_exit(int32_t fd);
    ErrorCode nsm_get_attestation_doc(int32_t fd, const uint8_t *user_data,
        uint32_t user_data_len, const uint8_t *nonce_data, uint32_t nonce_len,
        const uint8_t *pub_key_data, uint32_t pub_key_len, uint8_t *att_doc_data,
        uint32_t *att_doc_len);
    ErrorCode nsm_get_random(int32_t fd, uint8_t *buf, uintptr_t *buf_len);
    ErrorCode nsm_describe_pcr(int32_t fd, uint16_t index, bool *lock, uint8_t *data,
        uint32_t *data_len);
    ErrorCode nsm_extend_pcr(int32_t fd, uint16_t index, const uint8_t *data,
        uint32_t data_len, uint8_t *pcr_data, uint32_t *pcr_data_len);
    ErrorCode nsm_lock_pcr(int32_t fd, uint16_t index);
    ErrorCode nsm_lock_pcrs(int32_t fd, uint16_t range);
    ErrorCode nsm_get_description(int32_t fd, NsmDescription *nsm_description);
    """
)

_libc: Any = None
_libc_lock = threading.Lock()


def _get_libc() -> Any:
    global _libc  # noqa: PLW0603
    with _libc_lock:
        if _libc is None:
            _libc = ffi.dlopen(None)
        return _libc


def check(rc: int, *, errno: int = 0, what: str) -> None:
    """Raise NSMError unless `rc` reports success.

    `rc` is either an ioctl result (0 or -1 with `errno`) or a libnsm ErrorCode (0 = Success).
    ioctl errno EMSGSIZE means the request exceeded the driver's cap (InputTooLarge); any other
    errno is InternalError, as nsm-api maps it (spec 1.1).
    """
    if rc == 0:
        return
    if rc == -1:
        if errno == errno_codes.EMSGSIZE:
            raise NSMError(NSMErrorCode.InputTooLarge, f"{what}: request too large for the NSM")
        reason = os.strerror(errno) if errno else "unknown error"
        raise NSMError(NSMErrorCode.InternalError, f"{what} failed: {reason}")
    try:
        code = NSMErrorCode(rc)
    except ValueError:
        raise NSMError(NSMErrorCode.InternalError, f"{what}: unknown return code {rc}") from None
    raise NSMError(code, f"{what}: {code.name}")


def ioctl_exchange(fd: int, request: bytes, capacity: int) -> bytes:
    """Send `request` through the NSM raw ioctl on `fd`; return the reply bytes.

    The reply length is the one the driver writes back into the response iovec. Raises NSMError.
    """
    request_buf = ffi.from_buffer("uint8_t[]", request)
    response_buf = ffi.new("uint8_t[]", capacity)
    raw = ffi.new("struct nsm_raw *")
    raw.request.addr = int(ffi.cast("uintptr_t", request_buf))
    raw.request.len = len(request)
    raw.response.addr = int(ffi.cast("uintptr_t", response_buf))
    raw.response.len = capacity
    rc = _get_libc().ioctl(fd, NSM_IOCTL_RAW, raw)
    check(rc, errno=ffi.errno if rc == -1 else 0, what="NSM ioctl")
    return bytes(ffi.buffer(response_buf, reply_length(raw.response.len, capacity, "NSM ioctl")))


def reply_length(reported: int, capacity: int, what: str) -> int:
    """The reply length a driver or libnsm wrote back, refused when it exceeds the buffer.

    Reading past `capacity` would leak process memory and clipping would hand back a truncated
    reply as if it were whole, so both backends raise NSMError(InternalError) instead.
    """
    length = int(reported)
    if length > capacity:
        raise NSMError(
            NSMErrorCode.InternalError,
            f"{what} reported a {length}-byte reply for a {capacity}-byte buffer",
        )
    return length


def load_libnsm(path: str | None = None) -> Any:
    """dlopen libnsm: `path`, else `$NITROKMS_LIBNSM`, else `libnsm.so` on the loader path.

    Raises NSMUnavailableError when it cannot be loaded.
    """
    target = path or os.environ.get(LIBNSM_ENV) or LIBNSM_NAME
    try:
        return ffi.dlopen(target)
    except OSError as exc:
        raise NSMUnavailableError(f"cannot load {target}: {exc}") from None


class LibNSM:
    """Thin typed wrapper over libnsm's C functions; every ErrorCode goes through check()."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        fd = int(lib.nsm_lib_init())
        if fd < 0:
            raise NSMUnavailableError("libnsm could not open the NSM device")
        self._fd = fd

    def close(self) -> None:
        if self._fd >= 0:
            self._lib.nsm_lib_exit(self._fd)
            self._fd = -1

    def get_attestation_doc(
        self,
        user_data: bytes | None,
        nonce: bytes | None,
        public_key: bytes | None,
        capacity: int,
    ) -> bytes:
        out = ffi.new("uint8_t[]", capacity)
        out_len = ffi.new("uint32_t *", capacity)
        args: list[Any] = []
        for value in (user_data, nonce, public_key):
            args += [ffi.NULL, 0] if value is None else [ffi.from_buffer(value), len(value)]
        rc = self._lib.nsm_get_attestation_doc(self._fd, *args, out, out_len)
        check(rc, what="nsm_get_attestation_doc")
        return _reply(out, out_len, capacity, "nsm_get_attestation_doc")

    def get_random(self, capacity: int) -> bytes:
        out = ffi.new("uint8_t[]", capacity)
        out_len = ffi.new("uintptr_t *", capacity)
        check(self._lib.nsm_get_random(self._fd, out, out_len), what="nsm_get_random")
        return _reply(out, out_len, capacity, "nsm_get_random")

    def describe_pcr(self, index: int, capacity: int) -> tuple[bool, bytes]:
        lock = ffi.new("bool *")
        out = ffi.new("uint8_t[]", capacity)
        out_len = ffi.new("uint32_t *", capacity)
        rc = self._lib.nsm_describe_pcr(self._fd, index, lock, out, out_len)
        check(rc, what="nsm_describe_pcr")
        return bool(lock[0]), _reply(out, out_len, capacity, "nsm_describe_pcr")

    def extend_pcr(self, index: int, data: bytes, capacity: int) -> bytes:
        out = ffi.new("uint8_t[]", capacity)
        out_len = ffi.new("uint32_t *", capacity)
        rc = self._lib.nsm_extend_pcr(
            self._fd, index, ffi.from_buffer(data), len(data), out, out_len
        )
        check(rc, what="nsm_extend_pcr")
        return _reply(out, out_len, capacity, "nsm_extend_pcr")

    def lock_pcr(self, index: int) -> None:
        check(self._lib.nsm_lock_pcr(self._fd, index), what="nsm_lock_pcr")

    def lock_pcrs(self, range_: int) -> None:
        check(self._lib.nsm_lock_pcrs(self._fd, range_), what="nsm_lock_pcrs")

    def get_description(self) -> dict[str, Any]:
        desc = ffi.new("NsmDescription *")
        check(self._lib.nsm_get_description(self._fd, desc), what="nsm_get_description")
        id_len = reply_length(desc.module_id_len, MODULE_ID_CAPACITY, "nsm_get_description")
        pcr_len = reply_length(desc.locked_pcrs_len, LOCKED_PCRS_CAPACITY, "nsm_get_description")
        return {
            "version_major": int(desc.version_major),
            "version_minor": int(desc.version_minor),
            "version_patch": int(desc.version_patch),
            "module_id": bytes(ffi.buffer(desc.module_id, id_len)).decode("utf-8", "replace"),
            "max_pcrs": int(desc.max_pcrs),
            "locked_pcrs": tuple(sorted({int(desc.locked_pcrs[i]) for i in range(pcr_len)})),
            "digest": int(desc.digest),
        }


def _reply(out: Any, out_len: Any, capacity: int, what: str) -> bytes:
    return bytes(ffi.buffer(out, reply_length(out_len[0], capacity, what)))


def layout() -> dict[str, int]:
    """Offsets and size of NsmDescription as cffi lays it out (checked against spec 2)."""
    fields = [name for name, _ in ffi.typeof("NsmDescription").fields]
    result = {name: int(ffi.offsetof("NsmDescription", name)) for name in fields}
    result["sizeof"] = int(ffi.sizeof("NsmDescription"))
    return result
