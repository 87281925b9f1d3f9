"""Hand-built requests to the local KMS (signed with botocore's SigV4Auth) for protocol tests."""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from nitrokms.sim.kms.auth import Credential


def connect(url: str, ca: Path) -> http.client.HTTPSConnection:
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(ca))
    return http.client.HTTPSConnection(
        parts.hostname or "", parts.port, context=context, timeout=10
    )


def signed_headers(url: str, credential: Credential, target: str, body: bytes) -> dict[str, str]:
    request = AWSRequest(
        method="POST",
        url=url + "/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
    )
    creds = Credentials(
        credential.access_key_id, credential.secret_access_key, credential.session_token
    )
    SigV4Auth(creds, "kms", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def post(
    conn: http.client.HTTPSConnection, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, str]]:
    conn.request("POST", "/", body=body, headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())
