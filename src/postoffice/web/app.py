"""The Starlette application behind the `http` listener: client auto-configuration and metrics.

`build_app(ctx)` returns the ASGI app; everything it needs comes from the Context (DESIGN §9:
no module-level state), including its own Prometheus registry, so two apps in one test
process never share counters.  Webmail adds its routes to the same app.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postoffice.context import Context
from postoffice.metrics import Metrics
from postoffice.store.api import QueueState
from postoffice.web import autoconfig, webmail

SECURITY_HEADERS: Final = (
    # XML and plist documents need nothing; a page that needs more sets its own policy.
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
)
XML_TYPE: Final = "application/xml; charset=utf-8"
MOBILECONFIG_TYPE: Final = "application/x-apple-aspen-config"
QUEUE_COUNT_CAP: Final = 10_000  # a scrape counts at most this many pending messages


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every response that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(ctx: Context) -> Starlette:
    views = _Views(ctx)
    routes: list[BaseRoute] = [
        # Thunderbird asks autoconfig.<domain> first, then <domain>/.well-known/.
        Route("/.well-known/autoconfig/mail/config-v1.1.xml", views.thunderbird),
        Route("/mail/config-v1.1.xml", views.thunderbird),
        # Outlook capitalises the path, other clients do not; Starlette matches exactly.
        Route("/autodiscover/autodiscover.xml", views.autodiscover, methods=["GET", "POST"]),
        Route("/Autodiscover/Autodiscover.xml", views.autodiscover, methods=["GET", "POST"]),
        Route("/mobileconfig", views.mobileconfig),
        Route("/metrics", views.metrics),
    ]
    if ctx.config.webmail.enabled:
        routes += webmail.routes(ctx)
    app = Starlette(routes=routes)
    app.state.ctx = ctx  # how webmail views, given only the request, reach the Context
    app.add_middleware(SecurityHeaders)
    return app


class _Views:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = autoconfig.client_settings(ctx.config)

    async def thunderbird(self, request: Request) -> Response:
        address = autoconfig.parse_address(request.query_params.get("emailaddress", ""))
        if address is not None:
            domain = address.rpartition("@")[2]
        else:
            # Without ?emailaddress= the host Thunderbird asked (autoconfig.<domain>) names it.
            domain = (request.url.hostname or "").lower().removeprefix("autoconfig.")
        if not await self._local(domain):
            return _not_found()
        return Response(autoconfig.thunderbird_config(self.settings, domain), media_type=XML_TYPE)

    async def autodiscover(self, request: Request) -> Response:
        if request.method == "POST":
            body = await _bounded_body(request, autoconfig.AUTODISCOVER_REQUEST_MAX)
            address = None if body is None else autoconfig.autodiscover_address(body)
        else:
            address = autoconfig.parse_address(request.query_params.get("emailaddress", ""))
        if address is None or not await self._local(address.rpartition("@")[2]):
            return _not_found()
        document = autoconfig.autodiscover_response(self.settings, address)
        return Response(document, media_type=XML_TYPE)

    async def mobileconfig(self, request: Request) -> Response:
        address = autoconfig.parse_address(request.query_params.get("emailaddress", ""))
        if address is None or not await self._local(address.rpartition("@")[2]):
            return _not_found()
        profile = autoconfig.mobileconfig(self.settings, address)
        if profile is None:
            return _not_found()
        filename = f"{address.rpartition('@')[2]}.mobileconfig"
        return Response(
            profile,
            media_type=MOBILECONFIG_TYPE,
            headers={"content-disposition": f'attachment; filename="{filename}"'},
        )

    async def metrics(self, request: Request) -> Response:
        token = self.ctx.config.http.metrics_token
        if not token:
            return _not_found()
        offered = request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(offered.encode(), token.encode()):
            return PlainTextResponse(
                "token required\n", 401, headers={"www-authenticate": 'Bearer realm="metrics"'}
            )
        return Response(await self._metrics(), media_type=CONTENT_TYPE_LATEST)

    async def _metrics(self) -> bytes:
        # A fresh registry per scrape: every value is read now, nothing is kept between.
        registry = CollectorRegistry(auto_describe=True)
        store = self.ctx.store
        for name, value in (await store.counts()).items():
            gauge = Gauge(f"postoffice_store_{name}", f"Store {name}.", registry=registry)
            gauge.set(value)
        pending = await store.outbound.list(state=QueueState.PENDING, limit=QUEUE_COUNT_CAP)
        Gauge(
            "postoffice_queue_pending_messages",
            f"Messages waiting for remote delivery (counted up to {QUEUE_COUNT_CAP}).",
            registry=registry,
        ).set(len(pending))
        _process_counters(self.ctx.metrics, registry)
        throttle = self.ctx.throttle
        Gauge(
            "postoffice_auth_failing_ips",
            "Client IPs with failed logins in the throttle window (this process).",
            registry=registry,
        ).set(throttle.tracked_ips)
        Gauge(
            "postoffice_auth_failing_accounts",
            "Accounts with failed logins in the throttle window (this process).",
            registry=registry,
        ).set(throttle.tracked_accounts)
        return generate_latest(registry)

    async def _local(self, domain: str) -> bool:
        return bool(domain) and await self.ctx.store.is_local_domain(domain)


def _process_counters(metrics: Metrics, registry: CollectorRegistry) -> None:
    """This process's connection, delivery and login counters (metrics.py)."""
    open_now = Gauge(
        "postoffice_connections_open", "Open connections.", ["listener"], registry=registry
    )
    for listener, count in metrics.connections_open.items():
        open_now.labels(listener).set(count)
    for name, counter, text in (
        ("connections_accepted", metrics.connections_total, "Connections accepted."),
        ("connections_refused", metrics.connections_refused, "Connections refused by limits."),
    ):
        family = CounterMetricFamily(f"postoffice_{name}", text, labels=["listener"])
        for listener, count in counter.items():
            family.add_metric([listener], count)
        registry.register(_Collected(family))
    deliveries = CounterMetricFamily(
        "postoffice_deliveries", "Recipients of received messages, by outcome.", labels=["outcome"]
    )
    for outcome, count in metrics.deliveries.items():
        deliveries.add_metric([outcome], count)
    registry.register(_Collected(deliveries))
    failures = CounterMetricFamily("postoffice_auth_failures", "Failed logins, every protocol.")
    failures.add_metric([], metrics.auth_failures)
    registry.register(_Collected(failures))


class _Collected(Collector):
    """One metric family read from our own counters at scrape time."""

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterable[Metric]:
        return [self.family]


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is longer than `limit` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _not_found() -> Response:
    return PlainTextResponse("not found\n", 404)
