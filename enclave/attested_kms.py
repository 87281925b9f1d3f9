"""Attested boto3 KMS clients: plain calls that carry `Recipient` and come back with plaintext.

`attach_recipient` registers two botocore event handlers per operation on one client's own event
emitter (no global patching, no re-signing, no proxy):

- `provide-client-params.kms.<Op>` runs before validation and signing. Unless the caller already
  passed `Recipient`, it takes a key from the pool, asks the attestor for a fresh attestation
  document carrying that key's SPKI and adds `Recipient`. The key is stored in the per-call request
  context dict botocore hands to every handler of the same call, which is how request and reply are
  correlated when many threads share one client. Retries resend the same signed request, so they
  reuse the same document and key.
- `after-call.kms.<Op>` runs on the parsed reply. For a successful reply it decrypts
  `CiphertextForRecipient` with exactly that key (a blob for any other key is an
  `UnknownRecipientError`, never a wrong plaintext), puts the result where the plain API puts it and
  removes `CiphertextForRecipient`. A successful reply without it is a `RecipientReplyError`.

Inside the enclave an application writes ordinary boto3 code; the data key's plaintext never
existed outside the enclave:

    nsm = NSMClient.open()
    pool = RecipientKeyPool()
    with kms_network_path() as path:  # enclave.network: loopback, CONNECT listener, proxies
        kms = attested_kms_client(attestor=nsm.get_attestation_doc, pool=pool,
                                  **path.client_kwargs())
        key = kms.generate_data_key(KeyId="alias/app", KeySpec="AES_256")
        key["Plaintext"]  # 32 bytes, decrypted here from KMS's CiphertextForRecipient

`attest_session` does the same for a whole boto3 or botocore session: the handlers go on the
session's event emitter, which every client created from it afterwards copies, so a library that
makes its own KMS clients from the session (the AWS Encryption SDK's `botocore_session=`) gets
attested keys without knowing it. With a network path, the session's default client config also
routes through the CONNECT listener.
"""

from __future__ import annotations

from typing import Any

from nitrokms.enclave.cms import decrypt_enveloped_data
from nitrokms.enclave.errors import RecipientReplyError
from nitrokms.enclave.keypool import Attestor, RecipientKey, RecipientKeyPool

KEY_ENCRYPTION_ALGORITHM = "RSAES_OAEP_SHA_256"
SERVICE_EVENT_ID = "kms"
CONTEXT_KEY = "nitrokms.recipient_key"

PLAINTEXT_FIELDS: dict[str, str] = {
    "Decrypt": "Plaintext",
    "GenerateDataKey": "Plaintext",
    "GenerateDataKeyPair": "PrivateKeyPlaintext",
    "GenerateRandom": "Plaintext",
    "DeriveSharedSecret": "SharedSecret",
}


class RecipientHooks:
    """The handlers `attach_recipient` registers; one instance per client."""

    def __init__(self, attestor: Attestor, pool: RecipientKeyPool) -> None:
        self.attestor = attestor
        self.pool = pool

    def add_recipient(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        """Add `Recipient` for a pooled key. Raises KeyPoolError or the attestor's error."""
        if "Recipient" in params:
            return
        key = self.pool.acquire()
        document = self.attestor(public_key=key.spki_der)
        params["Recipient"] = {
            "KeyEncryptionAlgorithm": KEY_ENCRYPTION_ALGORITHM,
            "AttestationDocument": document,
        }
        context[CONTEXT_KEY] = key

    def decrypt_reply(
        self,
        http_response: Any,
        parsed: dict[str, Any],
        model: Any,
        context: dict[str, Any],
        **_: Any,
    ) -> None:
        """Replace `CiphertextForRecipient` by the plaintext field of the plain API.

        Raises UnknownRecipientError when the blob is for another key, another CMSError when it is
        malformed, DecryptionError when it does not decrypt, RecipientReplyError when it is absent.
        """
        key: RecipientKey | None = context.pop(CONTEXT_KEY, None)
        if key is None or http_response.status_code >= 300 or "Error" in parsed:
            return
        blob = parsed.pop("CiphertextForRecipient", None)
        if not blob:
            raise RecipientReplyError(
                f"KMS answered an attested {model.name} without CiphertextForRecipient"
            )
        parsed[PLAINTEXT_FIELDS[model.name]] = decrypt_enveloped_data(
            bytes(blob), {key.ski: key.private_key}
        )


def attach_recipient(client: Any, *, attestor: Attestor, pool: RecipientKeyPool) -> Any:
    """Make `client` (a boto3/botocore KMS client) attested for every operation in
    `PLAINTEXT_FIELDS`, and return it. Attaching twice to one client is a no-op.
    """
    service = client.meta.service_model.service_name
    if service != "kms":
        raise ValueError(f"attach_recipient needs a KMS client, not {service!r}")
    _register(client.meta.events, RecipientHooks(attestor, pool))
    return client


def attest_session(
    session: Any, *, attestor: Attestor, pool: RecipientKeyPool, network: Any = None
) -> Any:
    """Make every KMS client created from `session` (boto3 `Session` or botocore session) from
    now on attested, and return the session. Clients created before are left as they were.

    `network` (an `enclave.network.KMSNetworkPath`, started) also makes the session's clients
    reach KMS through the in-enclave CONNECT listener: its botocore config becomes the session's
    default, merged under any config a client is created with. Attaching twice is a no-op.
    """
    core = getattr(session, "_session", session)  # boto3.Session wraps a botocore session
    _register(core.get_component("event_emitter"), RecipientHooks(attestor, pool))
    if network is not None:
        default = core.get_default_client_config()
        config = network.botocore_config()
        core.set_default_client_config(config if default is None else default.merge(config))
    return session


def attested_session(
    *, attestor: Attestor, pool: RecipientKeyPool, network: Any = None, **session_kwargs: Any
) -> Any:
    """A new botocore session (credentials and region from the usual chain, or
    `session_kwargs` for `botocore.session.Session`) made attested by `attest_session`."""
    import botocore.session  # noqa: PLC0415 - botocore import is slow; only when needed

    return attest_session(
        botocore.session.Session(**session_kwargs), attestor=attestor, pool=pool, network=network
    )


def _register(events: Any, hooks: RecipientHooks) -> None:
    for operation in PLAINTEXT_FIELDS:
        events.register(
            f"provide-client-params.{SERVICE_EVENT_ID}.{operation}",
            hooks.add_recipient,
            unique_id=f"nitrokms-recipient-request-{operation}",
        )
        events.register(
            f"after-call.{SERVICE_EVENT_ID}.{operation}",
            hooks.decrypt_reply,
            unique_id=f"nitrokms-recipient-reply-{operation}",
        )


def attested_kms_client(
    session: Any = None, *, attestor: Attestor, pool: RecipientKeyPool, **client_kwargs: Any
) -> Any:
    """Create a KMS client from a boto3 `Session` (or botocore session; default: a new boto3
    session with the normal credential chain) and attach the Recipient hooks.
    """
    if session is None:
        import boto3.session  # noqa: PLC0415 - boto3 import is slow; only when needed

        session = boto3.session.Session()
    if hasattr(session, "create_client"):
        client = session.create_client("kms", **client_kwargs)
    else:
        client = session.client("kms", **client_kwargs)
    return attach_recipient(client, attestor=attestor, pool=pool)
