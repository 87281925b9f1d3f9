"""Relay counters and their Prometheus text exposition, with a minimal HTTP endpoint.

The endpoint speaks just enough HTTP/1.0 for a scraper: one bounded request head, one response,
close. It reads no body and never echoes request bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from nitrokms.proto.addresses import Address
from nitrokms.transport.sockets import start_server

MAX_REQUEST_HEAD_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FAILURE_REASONS = ("resolve", "not_allowed", "refused", "timeout", "unreachable")


@dataclass
class Metrics:
    accepted: int = 0
    active: int = 0
    refused: int = 0
    idle_timeouts: int = 0
    bytes_to_upstream: int = 0
    bytes_to_client: int = 0
    upstream_failures: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0)
    )

    @property
    def upstream_connect_failures(self) -> int:
        return sum(self.upstream_failures.values())

    def upstream_failed(self, reason: str) -> None:
        self.upstream_failures[reason] = self.upstream_failures.get(reason, 0) + 1

    def render(self) -> str:
        """Prometheus text format 0.0.4."""
        lines: list[str] = []
        _metric(lines, "accepted", "counter", "Client connections accepted.", self.accepted)
        _metric(lines, "active", "gauge", "Client connections open now.", self.active)
        _metric(lines, "refused", "counter", "Connections closed at max-connections.", self.refused)
        _metric(lines, "idle_timeouts", "counter", "Pairs closed as idle.", self.idle_timeouts)
        name = "nitrokms_proxy_upstream_connect_failures_total"
        lines.append(f"# HELP {name} Upstream connections that could not be made.")
        lines.append(f"# TYPE {name} counter")
        lines.extend(
            f'{name}{{reason="{reason}"}} {count}'
            for reason, count in sorted(self.upstream_failures.items())
        )
        name = "nitrokms_proxy_bytes_total"
        lines.append(f"# HELP {name} Bytes relayed, by direction.")
        lines.append(f"# TYPE {name} counter")
        lines.append(f'{name}{{direction="to_upstream"}} {self.bytes_to_upstream}')
        lines.append(f'{name}{{direction="to_client"}} {self.bytes_to_client}')
        return "\n".join(lines) + "\n"


def _metric(lines: list[str], short: str, kind: str, help_text: str, value: int) -> None:
    name = f"nitrokms_proxy_connections_{short}" + ("_total" if kind == "counter" else "")
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]


async def start_metrics_server(metrics: Metrics, address: Address) -> asyncio.AbstractServer:
    """Serve `GET /metrics` on `address`. Raises OSError if it cannot listen."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            status, body = _respond(head, metrics)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, body = "400 Bad Request", "bad request\n"
        except OSError:
            writer.close()
            return
        payload = body.encode()
        writer.write(
            f"HTTP/1.0 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    return await start_server(handle, address, limit=MAX_REQUEST_HEAD_BYTES)


def _respond(head: bytes, metrics: Metrics) -> tuple[str, str]:
    method, _, rest = head.partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0]
    if method != b"GET":
        return "405 Method Not Allowed", "only GET\n"
    if path not in (b"/metrics", b"/"):
        return "404 Not Found", "try /metrics\n"
    return "200 OK", metrics.render()
