"""Key tags: TagResource, UntagResource, ListResourceTags, and the Tags of CreateKey.

Limits and messages follow KMS: keys 1-128 and values 0-256 characters (ValidationException), at
most 50 tags on a key, no `aws:` prefix in any case and no key twice in one request
(TagException). Tags feed the `aws:ResourceTag/<key>` condition keys; TagResource and UntagResource
also offer `aws:RequestTag/<key>` and the multi-valued `aws:TagKeys`.
"""

from __future__ import annotations

from typing import Any

from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.conditions import ConditionValue
from nitrokms.sim.kms.exceptions import TagException, ValidationException
from nitrokms.sim.kms.operations import Operations, page
from nitrokms.sim.kms.params import Params, constraint_error
from nitrokms.sim.kms.records import Pairs

MAX_TAGS = 50
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 256


class TagOperations(Operations):
    OPERATIONS = ("TagResource", "UntagResource", "ListResourceTags")

    def op_TagResource(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        tags = request_tags(p)
        if tags is None:
            raise constraint_error("Tags", None, "not be null")
        conditions: dict[str, ConditionValue] = {f"aws:RequestTag/{k}": v for k, v in tags}
        conditions["aws:TagKeys"] = tuple(k for k, _ in tags)
        self._auth.authorise(key, "kms:TagResource", caller, conditions=conditions)
        key.require_not_pending()
        merged = dict(key.tags) | dict(tags)
        if len(merged) > MAX_TAGS:
            raise TagException("Too many tags")
        self.store.update_key(key.key_id, tags=tuple(merged.items()))
        return {}

    def op_UntagResource(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        names = p.string_list("TagKeys", max_items=MAX_TAGS, max_len=MAX_TAG_KEY_CHARS)
        if names is None:
            raise constraint_error("TagKeys", None, "not be null")
        conditions = {"aws:TagKeys": tuple(names)}
        self._auth.authorise(key, "kms:UntagResource", caller, conditions=conditions)
        key.require_not_pending()
        kept = tuple((k, v) for k, v in key.tags if k not in set(names))
        self.store.update_key(key.key_id, tags=kept)
        return {}

    def op_ListResourceTags(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        self._auth.authorise(key, "kms:ListResourceTags", caller)
        tags = [{"TagKey": k, "TagValue": v} for k, v in key.tags]
        return page(tags, "Tags", p, default=MAX_TAGS, most=MAX_TAGS)


def request_tags(p: Params) -> Pairs | None:
    """The request's `Tags`, validated. Raises ValidationException or TagException."""
    raw = p.raw("Tags")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ValidationException("Tags must be a list of {TagKey, TagValue} objects")
    if len(raw) > MAX_TAGS:
        raise TagException("Too many tags")
    tags = [_tag(index, item) for index, item in enumerate(raw, 1)]
    if any(k.lower().startswith("aws:") for k, _ in tags):
        raise TagException("Tags beginning with aws: are reserved")
    if len({k for k, _ in tags}) != len(tags):
        raise TagException("Duplicate tag keys")
    return tuple(tags)


def _tag(index: int, item: Any) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise ValidationException("Tags must be a list of {TagKey, TagValue} objects")
    key, value = item.get("TagKey"), item.get("TagValue")
    where = f"tags.{index}.member"
    if not isinstance(key, str) or not isinstance(value, str):
        raise constraint_error(f"{where}.tagKey", None, "be a string with a string TagValue")
    if not key:
        raise constraint_error(f"{where}.tagKey", key, "have length greater than or equal to 1")
    if len(key) > MAX_TAG_KEY_CHARS:
        constraint = f"have length less than or equal to {MAX_TAG_KEY_CHARS}"
        raise constraint_error(f"{where}.tagKey", key, constraint)
    if len(value) > MAX_TAG_VALUE_CHARS:
        constraint = f"have length less than or equal to {MAX_TAG_VALUE_CHARS}"
        raise constraint_error(f"{where}.tagValue", value, constraint)
    return key, value
