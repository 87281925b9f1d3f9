"""What a failed KMS call becomes: the mapping of error replies to the `KMSError` family (whose
classes live with every other enclave exception in `nitrokms.enclave.errors`).

`error_from_response` reads an HTTP error reply as botocore's JSON-protocol parser does, so a code
and message reach the RPC caller exactly as they did when the enclave's calls went through boto3.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

from nitrokms.enclave.errors import KMSError
from nitrokms.enclave.kms_wire import Response
from nitrokms.proto import codes

MAX_ERROR_MESSAGE_CHARS = 512
MALFORMED_RESPONSE = codes.KMS_MALFORMED_RESPONSE


def error_from_response(response: Response) -> KMSError:
    """The KMSError for an HTTP error reply, parsed as botocore's JSON protocol parser does: code
    from `__type` (the part after `#`, before `:`) or else the HTTP status, message from `message`
    or `Message`; a 5xx with an empty or HTML body is the status and its reason phrase."""
    status, text = response.status, response.body.strip()
    if status >= 500 and (not text or text.startswith(b"<html>")):
        code, message = str(status), http.client.responses.get(status, "")
    else:
        body = _loose_json(response.body)
        raw_code = body.get("__type", str(status))
        code = "" if raw_code is None else raw_code if isinstance(raw_code, str) else str(status)
        code = code.split(":", 1)[0].rsplit("#", 1)[-1]
        raw_message = body.get("message", body.get("Message", ""))
        message = raw_message if isinstance(raw_message, str) else str(raw_message or "")
    code = code or "UnknownError"
    return KMSError(clip(message or code), code=f"kms.{code}", status=status)


def _loose_json(data: bytes) -> dict[str, Any]:
    """An error body as botocore reads it: JSON, else the text as the message; {} when empty."""
    if not data:
        return {}
    text = data.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"message": text}
    return parsed if isinstance(parsed, dict) else {}


def clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_MESSAGE_CHARS else text[:MAX_ERROR_MESSAGE_CHARS] + "…"
