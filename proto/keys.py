"""`KeyRequest`: which KMS key, what size of data key, bound to which encryption context, under
which grant tokens.

It is the one value a data-key request travels as: the command line and the parent's RPC client
build it, the GenerateDataKey request body is one (LoadDataKey, Seal and Unseal bodies carry the
part of one they need, see their `key` property), the enclave service passes it on, and the
enclave's KMS client turns it into KMS parameters. On the wire its fields sit flat in the body,
so the wire format does not know this type exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Final

from nitrokms.proto import schema
from nitrokms.proto.codes import INVALID_FIELD
from nitrokms.proto.errors import LocalProtocolError
from nitrokms.proto.schema import kind_field

MAX_KEY_ID_CHARS: Final = 2048
DEFAULT_KEY_SPEC: Final = "AES_256"
KEY_SPECS: Final = ("AES_256", "AES_128")

KEY_ID = schema.Text(MAX_KEY_ID_CHARS)
KEY_SPEC = schema.Text(16, choices=KEY_SPECS)
NUMBER_OF_BYTES = schema.Int(1, 1024)
ENCRYPTION_CONTEXT = schema.TextMap(max_pairs=64, max_total_chars=8192)
GRANT_TOKENS = schema.ListOf(10, schema.Text(8192))


@dataclass(frozen=True)
class KeyRequest(schema.Record):
    """A data-key request; every field is optional here, and each use says which it needs.

    Raises LocalProtocolError (code `protocol.InvalidField`) naming a field that breaks its rule,
    or when both `key_spec` and `number_of_bytes` are given.
    """

    key_id: str | None = kind_field(KEY_ID, optional=True)
    key_spec: str | None = kind_field(KEY_SPEC, optional=True)
    number_of_bytes: int | None = kind_field(NUMBER_OF_BYTES, optional=True)
    encryption_context: dict[str, str] | None = kind_field(ENCRYPTION_CONTEXT, optional=True)
    grant_tokens: tuple[str, ...] | None = kind_field(GRANT_TOKENS, optional=True)

    def _check(self) -> None:
        if self.key_spec is not None and self.number_of_bytes is not None:
            raise LocalProtocolError(
                "give key_spec or number_of_bytes, not both", code=INVALID_FIELD
            )

    def fields(self) -> dict[str, Any]:
        """The fields that are set, by name (what a request body built from this one takes)."""
        names = (f.name for f in dataclasses.fields(KeyRequest))
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def sized(self) -> KeyRequest:
        """This request, with DEFAULT_KEY_SPEC when it names no size."""
        if self.key_spec is not None or self.number_of_bytes is not None:
            return self
        return replace(self, key_spec=DEFAULT_KEY_SPEC)
