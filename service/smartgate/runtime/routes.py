"""The HTTP routes, built once for both the single worker and the supervisor.

``/healthz`` (alive), ``/readyz`` (ready to decide), ``/metrics`` (Prometheus text) and, when
configured, ``/.well-known/smart-configuration``. The caller says what each one reads: a worker
reads its own key caches and registry, the supervisor its children and the multiprocess files.

Must not import ``smartgate.telemetry.metrics``: the supervisor builds its routes here too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from smartgate.runtime.http_listener import Response, Route, text
from smartgate.runtime.smart_configuration import CORS_HEADERS, SmartConfiguration

Probe = Callable[[], Awaitable[bool]]
MetricsRenderer = Callable[[], tuple[bytes, str]]  # (body, content type)
SmartSource = Callable[[], SmartConfiguration | None]  # read per request: a reload may replace it

_NOT_CONFIGURED: Response = ("404 Not Found", "application/json", b'{"error":"not configured"}', {})
_DISCOVERY_UNAVAILABLE: Response = (
    "503 Service Unavailable",
    "application/json",
    b'{"error":"discovery unavailable"}',
    {},
)


async def _always() -> bool:
    return True


def http_routes(
    *, ready: Probe, render_metrics: MetricsRenderer, smart: SmartSource, alive: Probe = _always
) -> dict[str, Route]:
    """The route table. ``alive`` is false only for a supervisor with no live worker; the SMART
    route exists when discovery is configured at start, and answers from whatever ``smart``
    returns at request time."""

    async def healthz() -> Response:
        return text("200 OK", "ok\n") if await alive() else text("503 Service Unavailable", "no workers\n")

    async def readyz() -> Response:
        return text("200 OK", "ready\n") if await ready() else text("503 Service Unavailable", "not ready\n")

    async def metrics_page() -> Response:
        body, content_type = render_metrics()
        return "200 OK", content_type, body, {}

    routes: dict[str, Route] = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics_page}
    if smart() is not None:

        async def smart_configuration() -> Response:
            current = smart()
            if current is None:
                return _NOT_CONFIGURED
            document = await current.document()
            if document is None:
                return _DISCOVERY_UNAVAILABLE
            return "200 OK", "application/json", SmartConfiguration.encode(document), dict(CORS_HEADERS)

        routes["/.well-known/smart-configuration"] = smart_configuration
    return routes
