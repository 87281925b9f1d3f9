"""KMS key policies for an attested enclave: generate one from nitro-cli measurements, and check any
policy for data-plane grants that skip attestation (the mistake behind aws-nitro-enclaves-sdk-c
#157: one unconditional `kms:Decrypt` anywhere makes every attestation condition pointless).

The generated policy has two kinds of statement:
- `EnclaveDataPlane` (and `EnclaveDataPlaneDebug` with `allow_debug`): the parent's role (or the
  account root) may call `kms:Decrypt` and `kms:GenerateDataKey` only with
  `StringEqualsIgnoreCase` on `kms:RecipientAttestation:PCR0/1/2` (plus any extra PCRs asked for).
  Those two are all the enclave service calls. `GenerateDataKeyPair` and `DeriveSharedSecret` also
  take a Recipient but the service never calls them, so they are not granted. `GenerateRandom` is
  authorised by IAM policy only (a key policy cannot grant it), so it is not listed either.
- `KeyAdministration`: the account root (or an admin ARN) gets the named management actions and
  nothing that reads or uses key material. `kms:CreateGrant` is left out on purpose: a grant lets
  its grantee call Decrypt without the key policy's conditions.

Every function here is pure; files and argv belong to `nitrokms.cli.policy`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

PCR_BYTES: Final = 48
PCR_HEX_CHARS: Final = 2 * PCR_BYTES
BOOT_PCRS: Final = (0, 1, 2)
MAX_PCR_INDEX: Final = 15
DEBUG_PCR_HEX: Final = "0" * PCR_HEX_CHARS
MAX_MEASUREMENTS_BYTES: Final = 64 * 1024
MAX_POLICY_BYTES: Final = 64 * 1024
CONDITION_PREFIX: Final = "kms:RecipientAttestation:"

GRANTED_DATA_PLANE: Final = ("kms:Decrypt", "kms:GenerateDataKey")
# Everything that yields or uses key material, or hands out access around the key policy.
ATTESTED_ONLY_ACTIONS: Final = (
    "kms:Decrypt",
    "kms:DeriveSharedSecret",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateRandom",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:CreateGrant",
)
ADMIN_ACTIONS: Final = (
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:DeleteImportedKeyMaterial",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:GetPublicKey",
    "kms:ListAliases",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:RetireGrant",
    "kms:RevokeGrant",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
)
# Condition keys that pin what runs in the enclave (image, application, or signing certificate);
# PCR1 (kernel), PCR3 (role) and PCR4 (instance) alone would admit any enclave image.
_PINNING_KEYS: Final = frozenset(k.lower() for k in ("ImageSha384", "PCR0", "PCR2", "PCR8"))
_PINNING_OPERATORS: Final = frozenset({"stringequals", "stringequalsignorecase"})
_ACCOUNT_RE: Final = re.compile(r"\d{12}")
_ROLE_ARN_RE: Final = re.compile(r"arn:(aws[a-z-]*):iam::(\d{12}):role/[\w+=,.@/-]{1,512}")
_PRINCIPAL_ARN_RE: Final = re.compile(r"arn:aws[a-z-]*:(?:iam|sts)::(\d{12}):[\w+=,.@/:-]{1,1024}")
_INSTANCE_ID_RE: Final = re.compile(r"i-[0-9a-f]{8,17}")
_HEX_RE: Final = re.compile(r"[0-9a-fA-F]*")


class PolicyError(ValueError):
    """Bad input to the generator or checker (measurements, PCR, ARN), or a generator bug."""


@dataclass(frozen=True)
class Measurements:
    """The PCRs from `nitro-cli build-enclave` output, as lower-case hex by index."""

    pcrs: Mapping[int, str]

    @property
    def is_debug(self) -> bool:
        return all(self.pcrs[i] == DEBUG_PCR_HEX for i in BOOT_PCRS)


@dataclass(frozen=True)
class PolicyRequest:
    """What to generate. `pcrs` are extra PCR indexes to pin, each taken from `explicit_pcrs`, the
    measurements (8), `role_arn` (3) or `instance_id` (4)."""

    measurements: Measurements
    role_arn: str | None = None
    account: str | None = None
    admin_arn: str | None = None
    instance_id: str | None = None
    pcrs: tuple[int, ...] = ()
    explicit_pcrs: Mapping[int, str] | None = None
    allow_debug: bool = False


def pcr_hex(text: object, what: str) -> str:
    """A 48-byte PCR as 96 hex digits, lower-cased. Raises PolicyError if it is not that."""
    if not isinstance(text, str) or not _HEX_RE.fullmatch(text):
        raise PolicyError(f"{what} is not hex")
    if len(text) != PCR_HEX_CHARS:
        raise PolicyError(f"{what} has {len(text)} hex digits, not {PCR_HEX_CHARS} (SHA-384)")
    return text.lower()


def measured_pcr(value: str) -> str:
    """The PCR a parent measures at enclave start: SHA384(48 zero bytes || UTF-8 value).

    PCR3 is this of the parent instance's IAM role ARN, PCR4 of its instance id (spec 1.4, 6.1).
    """
    return hashlib.sha384(bytes(PCR_BYTES) + value.encode()).hexdigest()


def parse_measurements(data: bytes) -> Measurements:
    """Read nitro-cli's `{"Measurements": {"HashAlgorithm": ..., "PCR0": hex, ...}}`.

    Raises PolicyError when it is too large, not that JSON shape, a PCR is not 96 hex digits,
    PCR0-2 are missing, or PCR0-2 are zero only in part (not something nitro-cli or a debug
    enclave produces).
    """
    if len(data) > MAX_MEASUREMENTS_BYTES:
        raise PolicyError(f"measurements file exceeds {MAX_MEASUREMENTS_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PolicyError("measurements file is not JSON") from None
    inner = document.get("Measurements") if isinstance(document, dict) else None
    if not isinstance(inner, dict):
        raise PolicyError('measurements file has no "Measurements" object (nitro-cli output)')
    algorithm = inner.get("HashAlgorithm", "Sha384")
    if not isinstance(algorithm, str) or not algorithm.lower().startswith("sha384"):
        raise PolicyError(f"HashAlgorithm {str(algorithm)[:40]!r} is not Sha384")
    pcrs: dict[int, str] = {}
    for name, value in inner.items():
        match = re.fullmatch(r"PCR(\d{1,2})", name)
        if match is None:
            continue
        index = int(match.group(1))
        if index > MAX_PCR_INDEX:
            raise PolicyError(f"{name} is not a PCR an attestation document carries (0..15)")
        pcrs[index] = pcr_hex(value, name)
    missing = [f"PCR{i}" for i in BOOT_PCRS if i not in pcrs]
    if missing:
        raise PolicyError(f"measurements lack {', '.join(missing)}")
    zero = [pcrs[i] == DEBUG_PCR_HEX for i in BOOT_PCRS]
    if any(zero) and not all(zero):
        raise PolicyError("PCR0-2 are zero only in part: neither an image nor a debug enclave")
    return Measurements(pcrs)


def account_of(request: PolicyRequest) -> str:
    """The account the key lives in: `account`, else the role ARN's; they must agree."""
    role_account = None
    if request.role_arn is not None:
        match = _ROLE_ARN_RE.fullmatch(request.role_arn)
        if match is None:
            raise PolicyError(f"--role-arn {request.role_arn[:200]!r} is not an IAM role ARN")
        role_account = match.group(2)
    if request.account is not None and not _ACCOUNT_RE.fullmatch(request.account):
        raise PolicyError(f"--account {request.account[:40]!r} is not a 12-digit account id")
    if request.account and role_account and request.account != role_account:
        raise PolicyError(f"--account {request.account} differs from the role's {role_account}")
    account = request.account or role_account
    if account is None:
        raise PolicyError("give --role-arn (the parent instance's role) or --account")
    return account


def pinned_pcrs(request: PolicyRequest) -> dict[int, str]:
    """PCR index -> hex for the data-plane condition (PCR0-2 always, then the extras)."""
    values = {i: request.measurements.pcrs[i] for i in BOOT_PCRS}
    explicit = dict(request.explicit_pcrs or {})
    wanted = [*request.pcrs, *explicit, *([4] if request.instance_id else [])]
    for index in wanted:
        values[index] = _extra_pcr(request, index, explicit)
    return dict(sorted(values.items()))


def _extra_pcr(request: PolicyRequest, index: int, explicit: Mapping[int, str]) -> str:
    if not 0 <= index <= MAX_PCR_INDEX:
        raise PolicyError(f"PCR{index} is not in an attestation document (0..15)")
    if index in explicit:
        value = pcr_hex(explicit[index], f"PCR{index}")
        if index in BOOT_PCRS and value == DEBUG_PCR_HEX and not request.allow_debug:
            raise PolicyError(f"PCR{index}=0... is the debug-mode value: it needs --allow-debug")
        return value
    if index in BOOT_PCRS or index in request.measurements.pcrs:
        return request.measurements.pcrs[index]
    if index == 3 and request.role_arn:
        return measured_pcr(request.role_arn)
    if index == 4 and request.instance_id:
        if not _INSTANCE_ID_RE.fullmatch(request.instance_id):
            raise PolicyError(f"--instance-id {request.instance_id[:40]!r} is not an i-... id")
        return measured_pcr(request.instance_id)
    if index == 8:
        raise PolicyError(
            "PCR8 exists only for a signed EIF (it measures the signing certificate) and these "
            "measurements have none: sign the EIF (nitro-cli build-enclave --signing-certificate "
            "CERT --private-key KEY) or leave 8 out of PCRS"
        )
    source = {3: "--role-arn", 4: "--instance-id"}
    hint = f"{source[index]} or " if index in source else ""
    raise PolicyError(f"no value for PCR{index}: give {hint}--pcr {index}=HEX")


def generate_policy(request: PolicyRequest) -> dict[str, Any]:
    """Build the key policy. Raises PolicyError on bad input, on debug-mode measurements without
    `allow_debug`, and if the result fails `find_unconditional_grants` (a generator bug)."""
    if request.measurements.is_debug and not request.allow_debug:
        raise PolicyError(
            "the measurements have all-zero PCR0-2, as debug-mode enclaves do; anyone's debug "
            "enclave would match. Pass --allow-debug if that is really wanted"
        )
    account = account_of(request)
    role = _ROLE_ARN_RE.fullmatch(request.role_arn or "")
    root = f"arn:{role.group(1) if role else 'aws'}:iam::{account}:root"
    data_principal = request.role_arn or root
    admin = request.admin_arn or root
    if request.admin_arn is not None and not _PRINCIPAL_ARN_RE.fullmatch(request.admin_arn):
        raise PolicyError(f"--admin-arn {request.admin_arn[:200]!r} is not an IAM ARN")
    pcrs = pinned_pcrs(request)
    statements = [_data_plane("EnclaveDataPlane", data_principal, pcrs)]
    if request.allow_debug and not request.measurements.is_debug:
        debug = pcrs | dict.fromkeys(BOOT_PCRS, DEBUG_PCR_HEX)
        statements.append(_data_plane("EnclaveDataPlaneDebug", data_principal, debug))
    statements.append(_admin(admin))
    policy: dict[str, Any] = {
        "Version": "2012-10-17",
        "Id": "nitrokms-attested-key",
        "Statement": statements,
    }
    problems = find_unconditional_grants(policy, allow_debug=request.allow_debug)
    if problems:
        raise PolicyError("generated policy failed its own check: " + "; ".join(problems))
    return policy


def _data_plane(sid: str, principal: str, pcrs: Mapping[int, str]) -> dict[str, Any]:
    conditions = {f"{CONDITION_PREFIX}PCR{i}": value for i, value in pcrs.items()}
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": list(GRANTED_DATA_PLANE),
        "Resource": "*",
        "Condition": {"StringEqualsIgnoreCase": conditions},
    }


def _admin(principal: str) -> dict[str, Any]:
    return {
        "Sid": "KeyAdministration",
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": list(ADMIN_ACTIONS),
        "Resource": "*",
    }


def render(policy: Mapping[str, Any]) -> str:
    """The policy as printed: JSON with 2-space indent and a final newline."""
    return json.dumps(policy, indent=2) + "\n"


def find_unconditional_grants(policy: Any, *, allow_debug: bool = False) -> list[str]:
    """Name every Allow statement that grants an attested-only action (`ATTESTED_ONLY_ACTIONS`,
    directly, by wildcard or through NotAction) without a condition that pins the enclave: a
    `StringEquals`/`StringEqualsIgnoreCase` (no IfExists, no set qualifier) on
    `kms:RecipientAttestation:` ImageSha384, PCR0, PCR2 or PCR8. Unless `allow_debug`, a pin that
    accepts the all-zero debug value is a finding too. Returns [] for a good policy.

    Raises PolicyError when the document is not a policy (no Statement, malformed fields).
    """
    statements = _statements(policy)
    problems: list[str] = []
    for index, statement in enumerate(statements):
        label = _label(index, statement)
        if statement.get("Effect") != "Allow":
            continue
        granted = _granted_attested_actions(statement, label)
        if not granted:
            continue
        verdict = _attestation_verdict(statement.get("Condition"), label, allow_debug)
        if verdict is not None:
            problems.append(f"{label} grants {', '.join(granted)} {verdict}")
    return problems


def _statements(policy: Any) -> list[dict[str, Any]]:
    if not isinstance(policy, dict) or "Statement" not in policy:
        raise PolicyError("not a policy: expected a JSON object with a Statement")
    raw = policy["Statement"]
    items = [raw] if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not all(isinstance(s, dict) for s in items):
        raise PolicyError("Statement must be an object or a list of objects")
    if any(s.get("Effect") not in ("Allow", "Deny") for s in items):
        raise PolicyError("every statement needs Effect Allow or Deny")
    return items


def _label(index: int, statement: Mapping[str, Any]) -> str:
    sid = statement.get("Sid")
    return f"statement #{index}" + (f" (Sid {sid!r})" if isinstance(sid, str) and sid else "")


def _strings(value: Any, label: str, name: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise PolicyError(f"{label}: {name} must be a string or a list of strings")
    return items


def _matches(pattern: str, action: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, action, re.IGNORECASE | re.DOTALL) is not None


def _granted_attested_actions(statement: Mapping[str, Any], label: str) -> list[str]:
    if "NotAction" in statement:
        excluded = _strings(statement["NotAction"], label, "NotAction")
        return [a for a in ATTESTED_ONLY_ACTIONS if not any(_matches(p, a) for p in excluded)]
    actions = _strings(statement.get("Action"), label, "Action")
    return [a for a in ATTESTED_ONLY_ACTIONS if any(_matches(p, a) for p in actions)]


def _attestation_verdict(condition: Any, label: str, allow_debug: bool) -> str | None:
    """None when `condition` pins the enclave, else why not (completing "grants X ...")."""
    if condition is None:
        return "without any condition"
    if not isinstance(condition, dict):
        raise PolicyError(f"{label}: Condition must be an object")
    pins = list(_pins(condition, label))
    if not pins:
        return (
            "without an attestation condition (needs StringEquals[IgnoreCase] on "
            "kms:RecipientAttestation:ImageSha384, PCR0, PCR2 or PCR8)"
        )
    if not allow_debug and any(DEBUG_PCR_HEX in values for values in pins):
        return "to debug-mode enclaves: its attestation condition accepts all-zero PCRs"
    return None


def _pins(condition: Mapping[str, Any], label: str) -> Iterable[Sequence[str]]:
    for operator, block in condition.items():
        if not isinstance(block, dict):
            raise PolicyError(f"{label}: Condition {str(operator)[:60]!r} must be an object")
        if str(operator).lower() not in _PINNING_OPERATORS:
            continue
        for key, values in block.items():
            name = str(key).lower()
            if name.startswith(CONDITION_PREFIX.lower()) and (
                name[len(CONDITION_PREFIX) :] in _PINNING_KEYS
            ):
                listed = values if isinstance(values, list) else [values]
                yield [str(v).lower() for v in listed]
