"""The credential provider: env and refreshable credentials, refresh timing, enclave restarts,
and secrets kept out of logs and reprs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import RefreshableCredentials
from nitrokms.parent.credentials import (
    ChainCredentials,
    CredentialProvider,
    CredentialSourceError,
    fetch_credentials,
    refresh_time,
)
from nitrokms.parent.rpc import AsyncEnclaveClient, Backoff
from nitrokms.proto import messages as m
from nitrokms.proto.addresses import UnixAddress

from nitrokms.cli import main
from tests.rpc.fakes import FakeEnclave, ScriptedServer, ServerThread

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRETKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN"
T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
FAST = Backoff(initial_s=0.01, max_s=0.05)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Credentials in the environment only: no profile files, no IMDS."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("NITROKMS_ENCLAVE"):
            monkeypatch.delenv(name)
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": TOKEN,
        "AWS_DEFAULT_REGION": "eu-central-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@dataclass
class FakeClock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class RefreshingSession:
    """A boto3-session stand-in whose credentials botocore refreshes through `issue`."""

    clock: FakeClock
    lifetime: timedelta
    region_name: str | None = "us-east-1"
    issued: list[str] = field(default_factory=list)
    credentials: RefreshableCredentials | None = None

    def issue(self) -> dict[str, str]:
        key = f"ASIAREFRESHED{len(self.issued):07d}"
        self.issued.append(key)
        return {
            "access_key": key,
            "secret_key": f"{SECRET}-{len(self.issued)}",
            "token": f"{TOKEN}-{len(self.issued)}",
            "expiry_time": (self.clock() + self.lifetime).isoformat(),
        }

    def get_credentials(self) -> RefreshableCredentials:
        if self.credentials is None:
            first = self.issue()
            self.credentials = RefreshableCredentials(
                first["access_key"],
                first["secret_key"],
                first["token"],
                self.clock() + self.lifetime,
                self.issue,
                "test",
                time_fetcher=self.clock,
            )
        return self.credentials


def set_credentials_requests(server: ScriptedServer) -> list[m.SetCredentialsRequest]:
    return [r.body for r in server.requests if isinstance(r.body, m.SetCredentialsRequest)]


def test_pushes_environment_credentials_without_logging_secrets(
    aws_env: dict[str, str], unix_address: UnixAddress, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with (
            ScriptedServer(unix_address, FakeEnclave()) as server,
            AsyncEnclaveClient(unix_address) as client,
        ):
            provider = CredentialProvider(client)
            record = await provider.push_once()
            assert set_credentials_requests(server) == [
                m.SetCredentialsRequest(
                    access_key_id=ACCESS_KEY,
                    secret_access_key=SECRET,
                    region="eu-central-1",
                    session_token=TOKEN,
                )
            ]
            assert record.access_key_hint == "...MPLE"
            assert record.expiry is None
            assert record.refresh_at is None
            for text in (repr(provider), repr(record), repr(server.requests[0])):
                assert SECRET not in text
                assert TOKEN not in text
                assert ACCESS_KEY not in repr(record)

    run(scenario())
    assert "...MPLE" in caplog.text
    assert SECRET not in caplog.text
    assert TOKEN not in caplog.text
    assert ACCESS_KEY not in caplog.text


def test_chain_credentials_repr_hides_secrets() -> None:
    creds = ChainCredentials(ACCESS_KEY, SECRET, TOKEN, None)
    assert SECRET not in repr(creds)
    assert TOKEN not in repr(creds)


@pytest.mark.parametrize(
    ("lifetime", "margin_s", "expected"),
    [
        (timedelta(hours=1), 300, timedelta(minutes=55)),
        (timedelta(hours=6), 300, timedelta(hours=5, minutes=55)),
        (timedelta(minutes=8), 300, timedelta(minutes=4)),
        (timedelta(seconds=1), 300, timedelta(seconds=1)),
        (timedelta(seconds=-5), 300, timedelta(seconds=1)),
    ],
)
def test_refresh_time_is_margin_before_expiry_or_half_life(
    lifetime: timedelta, margin_s: float, expected: timedelta
) -> None:
    assert refresh_time(T0, T0 + lifetime, margin_s) == T0 + expected
    assert refresh_time(T0, None, margin_s) is None


def test_refreshes_ahead_of_expiry_with_new_credentials(
    unix_address: UnixAddress, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    session = RefreshingSession(clock, lifetime=timedelta(hours=1))

    async def scenario() -> None:
        async with (
            ScriptedServer(unix_address, FakeEnclave()) as server,
            AsyncEnclaveClient(unix_address) as client,
        ):
            provider = CredentialProvider(client, session=session, clock=clock, poll_interval_s=30)
            assert await provider.tick() == 30
            assert provider.last_push is not None
            assert provider.last_push.refresh_at == T0 + timedelta(minutes=55)

            clock.advance(minutes=54, seconds=50)
            assert await provider.tick() == pytest.approx(10)
            assert len(set_credentials_requests(server)) == 1

            clock.advance(seconds=10)
            await provider.tick()
            pushed = set_credentials_requests(server)
            assert (
                [p.access_key_id for p in pushed]
                == session.issued
                == [
                    "ASIAREFRESHED0000000",
                    "ASIAREFRESHED0000001",
                ]
            )
            assert pushed[0].expiration_ms == int((T0 + timedelta(hours=1)).timestamp() * 1000)
            assert pushed[1].expiration_ms == int(
                (T0 + timedelta(minutes=55, hours=1)).timestamp() * 1000
            )
            assert pushed[1].secret_access_key == f"{SECRET}-2"
            assert provider.pushes == 2

    run(scenario())
    assert "...0001" in caplog.text
    assert "2030-06-01T13:55:00+00:00" in caplog.text
    assert SECRET not in caplog.text
    assert TOKEN not in caplog.text


def test_short_lived_credentials_refresh_at_half_life(unix_address: UnixAddress) -> None:
    clock = FakeClock()
    session = RefreshingSession(clock, lifetime=timedelta(minutes=8))

    async def scenario() -> None:
        async with (
            ScriptedServer(unix_address, FakeEnclave()) as server,
            AsyncEnclaveClient(unix_address) as client,
        ):
            provider = CredentialProvider(client, session=session, clock=clock)
            await provider.tick()
            clock.advance(minutes=4)
            await provider.tick()
            first, second = set_credentials_requests(server)
            assert first.access_key_id != second.access_key_id
            assert second.access_key_id == session.issued[-1]
            assert provider.last_push is not None
            assert provider.last_push.refresh_at == clock.now + timedelta(minutes=4)

    run(scenario())


def test_pushes_again_after_the_enclave_restarts(
    aws_env: dict[str, str], unix_address: UnixAddress
) -> None:
    async def scenario() -> None:
        async with AsyncEnclaveClient(unix_address, backoff=FAST) as client:
            provider = CredentialProvider(client, poll_interval_s=0.01)
            async with ScriptedServer(unix_address, FakeEnclave()) as first:
                await provider.tick()
                await provider.tick()
                assert len(set_credentials_requests(first)) == 1
            async with ScriptedServer(unix_address, FakeEnclave()) as second:
                await provider.tick()
                assert len(set_credentials_requests(second)) == 1
                assert provider.pushes == 2

    run(scenario())


def test_pushes_again_when_health_reports_no_credentials(
    aws_env: dict[str, str], unix_address: UnixAddress
) -> None:
    fake = FakeEnclave()

    async def scenario() -> None:
        async with (
            ScriptedServer(unix_address, fake) as server,
            AsyncEnclaveClient(unix_address) as client,
        ):
            provider = CredentialProvider(client)
            await provider.tick()
            await provider.tick()
            assert len(set_credentials_requests(server)) == 1
            fake.credentials = None
            await provider.tick()
            assert len(set_credentials_requests(server)) == 2
            assert fake.credentials is not None

    run(scenario())


def test_run_loop_repushes_after_restart_and_stops_on_request(
    aws_env: dict[str, str], unix_address: UnixAddress
) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        async with AsyncEnclaveClient(unix_address, backoff=FAST) as client:
            provider = CredentialProvider(client, poll_interval_s=0.01, retry_interval_s=0.01)
            async with ScriptedServer(unix_address, FakeEnclave()) as first:
                running = asyncio.create_task(provider.run(stop))
                await first.wait_for_operation("SetCredentials")
                await first.wait_for_operation("Health", 2)
            async with ScriptedServer(unix_address, FakeEnclave()) as second:
                await second.wait_for_operation("SetCredentials")
                stop.set()
                await running
            assert provider.pushes >= 2

    run(scenario())


def test_failures_are_logged_and_retried_not_raised(
    unix_address: UnixAddress, caplog: pytest.LogCaptureFixture
) -> None:
    class NoCredentials:
        region_name = "us-east-1"

        def get_credentials(self) -> None:
            return None

    async def scenario() -> None:
        async with AsyncEnclaveClient(unix_address, connect_timeout_s=0.05, backoff=FAST) as client:
            provider = CredentialProvider(client, session=NoCredentials(), retry_interval_s=7)
            with pytest.raises(CredentialSourceError, match="no AWS credentials"):
                await provider.push_once()
            assert await provider.tick() == 7
            session = RefreshingSession(FakeClock(), lifetime=timedelta(hours=1))
            provider = CredentialProvider(client, session=session, retry_interval_s=7)
            assert await provider.tick() == 7

    run(scenario())
    assert "credentials.Unavailable" in caplog.text
    assert "client.ConnectionFailed" in caplog.text


def test_refresh_callback_failure_becomes_a_typed_error() -> None:
    clock = FakeClock()
    session = RefreshingSession(clock, lifetime=timedelta(minutes=1))
    session.get_credentials()

    def broken() -> dict[str, str]:
        raise RuntimeError(f"leaky {SECRET}")

    assert session.credentials is not None
    session.credentials._refresh_using = broken
    with pytest.raises(CredentialSourceError) as caught:
        fetch_credentials(session)
    assert SECRET not in str(caught.value)
    assert "RuntimeError" in str(caught.value)


def test_missing_region_is_a_clear_error(unix_address: UnixAddress) -> None:
    session = RefreshingSession(FakeClock(), lifetime=timedelta(hours=1), region_name=None)

    async def scenario() -> None:
        async with AsyncEnclaveClient(unix_address) as client:
            provider = CredentialProvider(client, session=session)
            with pytest.raises(CredentialSourceError, match="no AWS region"):
                await provider.push_once()

    run(scenario())


# --- the command ------------------------------------------------------------------------------


@pytest.fixture
def enclave(unix_address: UnixAddress) -> Iterator[ServerThread]:
    with ServerThread(unix_address, FakeEnclave()) as running:
        yield running


def test_cli_once_pushes_and_exits_0(
    aws_env: dict[str, str], enclave: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["credentials", "--once", "--enclave", str(enclave.address), "--region", "eu-west-3"]
    )
    assert code == 0
    [request] = enclave.requests
    assert isinstance(request.body, m.SetCredentialsRequest)
    assert request.body.region == "eu-west-3"
    assert request.body.secret_access_key == SECRET
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err


def test_cli_once_json_names_the_push_without_secrets(
    aws_env: dict[str, str], enclave: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["credentials", "--once", "--json", "--enclave", str(enclave.address)]
    assert main([*argv, "--region", "eu-west-3"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "pushed": True,
        "access_key": "...MPLE",
        "region": "eu-west-3",
        "expiration": None,
        "refresh_at": None,
    }
    assert SECRET not in captured.out + captured.err


def test_cli_once_pushes_short_dummy_credentials(
    aws_env: dict[str, str],
    enclave: ServerThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    assert main(["credentials", "--once", "--enclave", str(enclave.address)]) == 0, (
        capsys.readouterr().err
    )
    [request] = enclave.requests
    assert isinstance(request.body, m.SetCredentialsRequest)
    assert request.body.access_key_id == "test"


def test_cli_once_without_credentials_exits_1(
    aws_env: dict[str, str],
    enclave: ServerThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert main(["credentials", "--once", "--enclave", str(enclave.address)]) == 1
    assert "credentials.Unavailable" in capsys.readouterr().err
    assert enclave.requests == []


def test_cli_without_region_exits_2(
    aws_env: dict[str, str],
    enclave: ServerThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert main(["credentials", "--once", "--enclave", str(enclave.address)]) == 2
    assert "no AWS region" in capsys.readouterr().err


def test_daemon_pushes_then_stops_cleanly_on_sigterm(
    aws_env: dict[str, str], enclave: ServerThread
) -> None:
    nitrokms = Path(sys.executable).parent / "nitrokms"
    env = {**os.environ, "NITROKMS_ENCLAVE": str(enclave.address)}
    process = subprocess.Popen(
        [str(nitrokms), "credentials", "--poll-interval", "0.05"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        enclave.run(enclave.server.wait_for_operation("Health", 2), timeout_s=30)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert b"pushed credentials ...MPLE (region eu-central-1, expiring never)" in err
    assert SECRET.encode() not in out + err
    assert TOKEN.encode() not in out + err
