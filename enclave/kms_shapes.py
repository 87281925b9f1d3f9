"""The JSON side of the enclave's KMS calls: request parameters in, reply fields out.

Parameters are checked against KMS's model limits before anything is sent (botocore did the same,
and in-enclave callers of `EnclaveKMS` have no other check); reply fields are read strictly, so a
reply that lacks one or carries something that is not base64 is a typed `kms.MalformedResponse`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from nitrokms.enclave.errors import KMSError, KMSRequestError
from nitrokms.enclave.kms_errors import MALFORMED_RESPONSE
from nitrokms.enclave.kms_wire import Response
from nitrokms.proto.keys import KeyRequest

# KMS's input limits for the parameters these calls take (its service model).
MAX_KEY_ID_CHARS = 2048
MAX_NUMBER_OF_BYTES = 1024
MAX_GRANT_TOKENS, MAX_GRANT_TOKEN_CHARS = 10, 8192
MAX_CIPHERTEXT_BYTES = 6144


def json_object(response: Response) -> dict[str, Any]:
    """A success reply's body. Raises KMSError (kms.MalformedResponse) unless a JSON object."""
    try:
        parsed = json.loads(response.body) if response.body else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise KMSError(
            "KMS answered with a body that is not a JSON object", code=MALFORMED_RESPONSE
        )
    return parsed


def decode_blob(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise KMSError(f"KMS answered with a {name} that is not text", code=MALFORMED_RESPONSE)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KMSError(
            f"KMS answered with a {name} that is not base64", code=MALFORMED_RESPONSE
        ) from None


def blob(reply: Mapping[str, Any], name: str) -> bytes:
    if name not in reply:
        raise KMSError(f"KMS answered without {name}", code=MALFORMED_RESPONSE)
    return decode_blob(reply[name], name)


def text(reply: Mapping[str, Any], name: str) -> str:
    value = reply.get(name)
    if not isinstance(value, str):
        raise KMSError(f"KMS answered without {name}", code=MALFORMED_RESPONSE)
    return value


def validate(params: Mapping[str, Any]) -> None:
    """What botocore checked before sending (types and the model's lengths and ranges).
    Raises KMSRequestError."""
    problems = []
    key_id = params.get("KeyId")
    if key_id is not None and not (
        isinstance(key_id, str) and 1 <= len(key_id) <= MAX_KEY_ID_CHARS
    ):
        problems.append(f"KeyId must be a string of 1..{MAX_KEY_ID_CHARS} characters")
    size = params.get("NumberOfBytes")
    if size is not None and not (type(size) is int and 1 <= size <= MAX_NUMBER_OF_BYTES):
        problems.append(f"NumberOfBytes must be an integer in 1..{MAX_NUMBER_OF_BYTES}")
    if "KeySpec" in params and not isinstance(params["KeySpec"], str):
        problems.append("KeySpec must be a string")
    context = params.get("EncryptionContext", {})
    if not isinstance(context, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in context.items()
    ):
        problems.append("EncryptionContext must map strings to strings")
    tokens = params.get("GrantTokens", [])
    if (
        not isinstance(tokens, list)
        or len(tokens) > MAX_GRANT_TOKENS
        or not all(isinstance(t, str) and 1 <= len(t) <= MAX_GRANT_TOKEN_CHARS for t in tokens)
    ):
        problems.append(
            f"GrantTokens must be at most {MAX_GRANT_TOKENS} strings of 1..{MAX_GRANT_TOKEN_CHARS}"
        )
    ciphertext = params.get("CiphertextBlob")
    if ciphertext is not None and not 1 <= len(ciphertext) <= MAX_CIPHERTEXT_BYTES:
        problems.append(f"CiphertextBlob must be 1..{MAX_CIPHERTEXT_BYTES} bytes")
    if problems:
        raise KMSRequestError("Parameter validation failed: " + "; ".join(problems))


def key_params(request: KeyRequest) -> dict[str, Any]:
    """A KeyRequest in KMS's parameter names (absent and empty fields left out)."""
    params: dict[str, Any] = {}
    if request.key_id is not None:
        params["KeyId"] = request.key_id
    if request.key_spec is not None:
        params["KeySpec"] = request.key_spec
    if request.number_of_bytes is not None:
        params["NumberOfBytes"] = request.number_of_bytes
    if request.encryption_context:
        params["EncryptionContext"] = dict(request.encryption_context)
    if request.grant_tokens:
        params["GrantTokens"] = list(request.grant_tokens)
    return params


def generate_params(request: KeyRequest) -> dict[str, Any]:
    """GenerateDataKey parameters: a key id is required; AES_256 unless a size is named.
    Raises KMSRequestError."""
    if request.key_id is None:
        raise KMSRequestError("GenerateDataKey needs a key id")
    return key_params(request.sized())
