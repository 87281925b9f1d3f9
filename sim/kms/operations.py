"""What every group of operations shares: the store, the authorizer, Recipient reading, grant
tokens, key-usage checks, the secret-or-CiphertextForRecipient reply field, DryRun and paging.

Order of checks inside every key operation: parameters -> key lookup -> key policy and grants
(AccessDeniedException, the denial logged) -> key state and usage -> the work -> DryRun, so DryRun
reports whether the call would have succeeded.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from nitrokms.sim.kms import grant_tokens
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.authorizer import Authorizer
from nitrokms.sim.kms.cms_encoder import encrypt_for_recipient
from nitrokms.sim.kms.conditions import ConditionValue
from nitrokms.sim.kms.exceptions import (
    DryRunOperationException,
    InvalidKeyUsageException,
    InvalidMarkerException,
)
from nitrokms.sim.kms.models import KeyStore
from nitrokms.sim.kms.params import Params
from nitrokms.sim.kms.recipient import Recipient, RecipientReader
from nitrokms.sim.kms.records import Key

log = logging.getLogger("nitrokms.sim.kms")


class Operations:
    """Base of the operation groups; `OPERATIONS` names the `op_<Name>` methods a group serves."""

    OPERATIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        store: KeyStore,
        authorizer: Authorizer,
        recipients: RecipientReader,
        encrypt_for_recipient: Callable[[bytes, bytes], bytes] | None = None,
    ) -> None:
        self.store = store
        self._auth = authorizer
        self._recipients = recipients
        self._encrypt_for_recipient = encrypt_for_recipient

    def grant_ids(self, p: Params) -> tuple[str, ...]:
        """The grants the request's GrantTokens name. Raises InvalidGrantTokenException."""
        return tuple(grant_tokens.grant_id_of(self.store.token_key, t) for t in p.grant_tokens())

    def authorised_key(
        self,
        p: Params,
        caller: Credential,
        action: str,
        *,
        context: dict[str, str] | None = None,
        recipient: Recipient | None = None,
        conditions: Mapping[str, ConditionValue] | None = None,
    ) -> Key:
        """The request's KeyId (id, ARN or alias) once the key policy or a grant allows `action`,
        its grant tokens validated on the way. Raises NotFound, InvalidGrantToken, AccessDenied."""
        key_ref = p.required_string("KeyId")
        grant_ids = self.grant_ids(p)
        key = self.store.resolve(key_ref)
        self._auth.authorise(
            key, action, caller, context=context, recipient=recipient, conditions=conditions,
            grant_ids=grant_ids,
        )  # fmt: skip
        return key

    def recipient(self, p: Params) -> Recipient | None:
        raw = p.raw("Recipient")
        if raw is None:
            return None
        recipient = self._recipients.read(raw)
        if recipient.verified:
            log.info("Recipient document from %s verified", recipient.module_id)
        else:
            log.info(
                "Recipient document from %s did not verify: %s",
                recipient.module_id,
                recipient.failure,
            )
        return recipient

    def secret_field(self, name: str, secret: bytes, recipient: Recipient | None) -> dict[str, str]:
        """`{name: secret}`, or with a Recipient `{"CiphertextForRecipient": CMS(secret)}`."""
        if recipient is None:
            return {name: b64(secret)}
        encrypt = self._encrypt_for_recipient or encrypt_for_recipient
        return {"CiphertextForRecipient": b64(encrypt(secret, recipient.public_key_der))}


def require_usage(key: Key, usage: str, operation: str) -> None:
    """The key must be usable and of `usage`. Raises Disabled / KMSInvalidState /
    InvalidKeyUsageException (with KMS's messages)."""
    key.require_usable()
    if key.key_usage != usage:
        raise InvalidKeyUsageException(
            f"{key.arn} key usage is {key.key_usage} which is not valid for {operation}."
        )


def incompatible(algorithm: str, key: Key) -> InvalidKeyUsageException:
    return InvalidKeyUsageException(
        f"Algorithm {algorithm} is incompatible with key spec {key.key_spec}."
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dry_run(p: Params) -> None:
    if p.boolean("DryRun"):
        raise DryRunOperationException()


def page(
    items: list[Any], name: str, p: Params, *, default: int = 100, most: int = 1000
) -> dict[str, Any]:
    """One page of `items` by Limit (1..`most`, default `default`) and Marker."""
    limit = p.integer("Limit", low=1, high=most) or default
    marker = p.string("Marker", max_len=1024)
    start = 0
    if marker is not None:
        if not marker.isdigit() or int(marker) > len(items):
            raise InvalidMarkerException("Invalid marker")
        start = int(marker)
    chunk = items[start : start + limit]
    result: dict[str, Any] = {name: chunk, "Truncated": start + limit < len(items)}
    if result["Truncated"]:
        result["NextMarker"] = str(start + limit)
    return result
