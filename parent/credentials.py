"""The credential provider: feeds the enclave AWS credentials from boto3's default chain.

The enclave has no IAM role and no network of its own, so the parent pushes it credentials with
SetCredentials: from IMDSv2 on EC2 (the instance role), the environment or a profile elsewhere.
Refreshable credentials are pushed again ahead of their expiry (`refresh_margin_s` before it, or
at half their lifetime when that is shorter), and whenever the enclave may have lost them: the
client had to reconnect (the enclave restarted) or Health says it holds none.

Secrets pass straight from botocore to the RPC client and are never stored, logged or put on a
command line; logs name the access key id by its last four characters and the expiry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from nitrokms.parent.rpc.client import AsyncEnclaveClient
from nitrokms.parent.rpc.errors import RPCError

DEFAULT_REFRESH_MARGIN_S: Final = 300.0
DEFAULT_POLL_INTERVAL_S: Final = 30.0
DEFAULT_RETRY_INTERVAL_S: Final = 5.0
MIN_REFRESH_INTERVAL_S: Final = 1.0

_log = logging.getLogger("nitrokms.credentials")

Clock = Callable[[], datetime]


class CredentialSession(Protocol):
    """The part of `boto3.Session` the provider uses."""

    @property
    def region_name(self) -> str | None: ...

    def get_credentials(self) -> Any: ...


class CredentialSourceError(Exception):
    """No credentials (or no region) could be had from the boto3 chain; the message says why."""

    code = "credentials.Unavailable"

    def __str__(self) -> str:
        return f"{self.code}: {super().__str__()}"


@dataclass(frozen=True)
class PushRecord:
    """What the provider knows about its last push; holds no secret."""

    access_key_hint: str
    region: str
    pushed_at: datetime
    expiry: datetime | None
    refresh_at: datetime | None


def key_hint(access_key_id: str) -> str:
    """The most of an access key id that may be logged: its last four characters."""
    return "..." + access_key_id[-4:]


def utc_now() -> datetime:
    return datetime.now(UTC)


def refresh_time(pushed_at: datetime, expiry: datetime | None, margin_s: float) -> datetime | None:
    """When to push again: `margin_s` before expiry, or at half-life for short-lived credentials;
    never sooner than MIN_REFRESH_INTERVAL_S after the push. None for credentials that never
    expire."""
    if expiry is None:
        return None
    lifetime = expiry - pushed_at
    margin = timedelta(seconds=margin_s)
    at = expiry - margin if lifetime > 2 * margin else pushed_at + lifetime / 2
    return max(at, pushed_at + timedelta(seconds=MIN_REFRESH_INTERVAL_S))


class CredentialProvider:
    """Pushes credentials to the enclave through `client` and keeps them fresh.

    `session` defaults to a new `boto3.Session()`; `region` to the session's. `clock` returns an
    aware UTC datetime and is also what expiry is measured against.
    """

    def __init__(
        self,
        client: AsyncEnclaveClient,
        *,
        session: CredentialSession | None = None,
        region: str | None = None,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S,
        clock: Clock = utc_now,
    ) -> None:
        if session is None:
            try:
                session = boto3.Session()
            except BotoCoreError as exc:
                raise CredentialSourceError(f"cannot set up boto3: {exc}") from None
        self.client = client
        self.session = session
        self.region = region or session.region_name
        self.refresh_margin_s = refresh_margin_s
        self.poll_interval_s = poll_interval_s
        self.retry_interval_s = retry_interval_s
        self.clock = clock
        self.last_push: PushRecord | None = None
        self.pushes = 0
        self._pushed_on_connection = -1

    def __repr__(self) -> str:
        return f"CredentialProvider(client={self.client!r}, region={self.region!r})"

    async def push_once(self) -> PushRecord:
        """Fetch credentials from the chain and push them. Raises CredentialSourceError or an
        RPCError from the client."""
        region = self.region
        if not region:
            raise CredentialSourceError(
                "no AWS region: pass --region, set AWS_REGION, or configure the profile"
            )
        secrets = await asyncio.to_thread(fetch_credentials, self.session)
        await self.client.set_credentials(
            secrets.access_key_id,
            secrets.secret_access_key,
            region,
            secrets.session_token,
            secrets.expiry,
        )
        return self._record(secrets.access_key_id, region, secrets.expiry)

    def _record(self, access_key_id: str, region: str, expiry: datetime | None) -> PushRecord:
        now = self.clock()
        record = PushRecord(
            access_key_hint=key_hint(access_key_id),
            region=region,
            pushed_at=now,
            expiry=expiry,
            refresh_at=refresh_time(now, expiry, self.refresh_margin_s),
        )
        self.last_push = record
        self.pushes += 1
        self._pushed_on_connection = self.client.connections_opened
        _log.info(
            "pushed credentials %s (region %s, expiring %s) to the enclave",
            record.access_key_hint,
            record.region,
            expiry.isoformat() if expiry else "never",
        )
        return record

    async def tick(self) -> float:
        """Push if due (first run, refresh time, enclave restarted or without credentials);
        return the seconds until the next check. Failures are logged and retried later."""
        try:
            if self._refresh_due() or await self._enclave_lost_credentials():
                await self.push_once()
        except (RPCError, CredentialSourceError) as exc:
            _log.warning("credential push failed: %s", exc)
            return self.retry_interval_s
        return self._seconds_until_next_check()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Keep the enclave supplied until `stop` is set (or forever)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            delay_s = await self.tick()
            try:
                async with asyncio.timeout(delay_s):
                    await stop.wait()
            except TimeoutError:
                continue

    def _refresh_due(self) -> bool:
        record = self.last_push
        if record is None:
            return True
        return record.refresh_at is not None and self.clock() >= record.refresh_at

    async def _enclave_lost_credentials(self) -> bool:
        health = await self.client.health()
        if self.client.connections_opened != self._pushed_on_connection:
            _log.info("reconnected to the enclave (it may have restarted); pushing credentials")
            return True
        if not health.credentials_present:
            _log.info("the enclave reports no credentials; pushing them again")
            return True
        return False

    def _seconds_until_next_check(self) -> float:
        record = self.last_push
        if record is None or record.refresh_at is None:
            return self.poll_interval_s
        until_refresh = (record.refresh_at - self.clock()).total_seconds()
        return max(0.0, min(self.poll_interval_s, until_refresh))


@dataclass(frozen=True)
class ChainCredentials:
    """One consistent set of credentials from the chain; secrets kept out of repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    expiry: datetime | None


def fetch_credentials(session: CredentialSession) -> ChainCredentials:
    """Frozen credentials from the chain, with their expiry when they are refreshable.

    Raises CredentialSourceError when the chain finds nothing or a provider fails.
    """
    try:
        credentials = session.get_credentials()
        if credentials is None:
            raise CredentialSourceError(
                "boto3 found no AWS credentials (instance role, environment or profile)"
            )
        frozen = credentials.get_frozen_credentials()
    except CredentialSourceError:
        raise
    except (BotoCoreError, ClientError) as exc:
        raise CredentialSourceError(f"fetching credentials failed: {str(exc)[:300]}") from None
    except Exception as exc:  # a refresh callback may raise anything; only its type is safe to log
        raise CredentialSourceError(f"fetching credentials failed: {type(exc).__name__}") from None
    expiry = getattr(credentials, "_expiry_time", None)
    if isinstance(expiry, datetime) and expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    return ChainCredentials(
        access_key_id=frozen.access_key,
        secret_access_key=frozen.secret_key,
        session_token=frozen.token,
        expiry=expiry if isinstance(expiry, datetime) else None,
    )
