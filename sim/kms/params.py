"""Typed access to a request's JSON parameters, with KMS-shaped validation messages."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection
from typing import Any

from nitrokms.sim.kms.exceptions import InvalidGrantTokenException, ValidationException

MAX_GRANT_TOKENS = 10
MAX_GRANT_TOKEN_CHARS = 8192
MAX_CONTEXT_PAIRS = 64


def _member(name: str) -> str:
    return name[:1].lower() + name[1:]


def constraint_error(name: str, value: object, constraint: str) -> ValidationException:
    shown = f"<{len(value)} bytes>" if isinstance(value, bytes) else str(value)
    if len(shown) > 64:
        shown = f"{shown[:61]}..."
    return ValidationException(
        f"1 validation error detected: Value '{shown}' at '{_member(name)}' failed to satisfy "
        f"constraint: Member must {constraint}"
    )


class Params:
    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw

    def has(self, name: str) -> bool:
        return self._raw.get(name) is not None

    def string(
        self, name: str, *, required: bool = False, max_len: int = 2048, min_len: int = 1
    ) -> str | None:
        value = self._raw.get(name)
        if value is None:
            if required:
                raise constraint_error(name, None, "not be null")
            return None
        if not isinstance(value, str):
            raise ValidationException(f"{name} must be a string")
        if not min_len <= len(value) <= max_len:
            raise constraint_error(
                name, value, f"have length between {min_len} and {max_len}, inclusive"
            )
        return value

    def required_string(self, name: str, *, max_len: int = 2048) -> str:
        value = self.string(name, required=True, max_len=max_len)
        assert value is not None
        return value

    def enum(self, name: str, allowed: Collection[str], default: str | None = None) -> str | None:
        value = self.string(name, max_len=256)
        if value is None:
            return default
        if value not in allowed:
            raise constraint_error(
                name, value, f"satisfy enum value set: [{', '.join(sorted(allowed))}]"
            )
        return value

    def required_enum(self, name: str, allowed: Collection[str]) -> str:
        value = self.enum(name, allowed)
        if value is None:
            raise constraint_error(name, None, "not be null")
        return value

    def blob(self, name: str, *, required: bool = False, max_len: int) -> bytes | None:
        text = self._raw.get(name)
        if text is None:
            if required:
                raise constraint_error(name, None, "not be null")
            return None
        if not isinstance(text, str) or len(text) > (max_len + 2) // 3 * 4 + 4:
            raise constraint_error(name, "<blob>", f"have length less than or equal to {max_len}")
        try:
            value = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationException(f"{name} is not valid base64") from None
        if not 1 <= len(value) <= max_len:
            raise constraint_error(name, value, f"have length between 1 and {max_len}, inclusive")
        return value

    def required_blob(self, name: str, *, max_len: int) -> bytes:
        value = self.blob(name, required=True, max_len=max_len)
        assert value is not None
        return value

    def integer(self, name: str, *, low: int, high: int) -> int | None:
        value = self._raw.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationException(f"{name} must be an integer")
        if value < low:
            raise constraint_error(name, value, f"have value greater than or equal to {low}")
        if value > high:
            raise constraint_error(name, value, f"have value less than or equal to {high}")
        return value

    def boolean(self, name: str) -> bool:
        value = self._raw.get(name)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ValidationException(f"{name} must be a boolean")
        return value

    def context(self, name: str = "EncryptionContext") -> dict[str, str]:
        value = self._raw.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict) or len(value) > MAX_CONTEXT_PAIRS:
            raise ValidationException(f"{name} must be a map of at most {MAX_CONTEXT_PAIRS} pairs")
        for key, item in value.items():
            if not isinstance(item, str) or not key:
                raise ValidationException(f"{name} must map non-empty strings to strings")
        return dict(value)

    def grant_tokens(self) -> list[str]:
        """GrantTokens, checked for shape only. Raises InvalidGrantTokenException."""
        value = self._raw.get("GrantTokens")
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > MAX_GRANT_TOKENS:
            raise InvalidGrantTokenException(
                f"GrantTokens must be a list of at most {MAX_GRANT_TOKENS} tokens"
            )
        for token in value:
            if not isinstance(token, str) or not 1 <= len(token) <= MAX_GRANT_TOKEN_CHARS:
                raise InvalidGrantTokenException("The grant token is invalid.")
        return list(value)

    def string_list(self, name: str, *, max_items: int, max_len: int) -> list[str] | None:
        """A list of 1..`max_len`-character strings (at most `max_items` of them)."""
        value = self._raw.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or len(value) > max_items:
            raise ValidationException(f"{name} must be a list of at most {max_items} strings")
        for index, item in enumerate(value, 1):
            if not isinstance(item, str):
                raise ValidationException(f"{name} must be a list of strings")
            if not 1 <= len(item) <= max_len:
                raise constraint_error(
                    f"{name}.{index}.member",
                    item,
                    f"have length between 1 and {max_len}, inclusive",
                )
        return list(value)

    def raw(self, name: str) -> Any:
        return self._raw.get(name)
