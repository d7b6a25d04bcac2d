"""Routes that need no token: the capability statement, SMART discovery, CORS preflight,
and whatever the operator adds (a provider directory, say)."""

from __future__ import annotations

from collections.abc import Iterable

from smartgate.config.model import PublicRoute
from smartgate.core.http import HttpRequest

BUILT_IN = (
    PublicRoute(path="/metadata"),
    PublicRoute(path="/.well-known/smart-configuration"),
)


class PublicRoutes:
    def __init__(self, base_path: str, extra: Iterable[PublicRoute]) -> None:
        self._base_path = base_path
        self._routes = (*BUILT_IN, *extra)

    def matches(self, request: HttpRequest) -> bool:
        if request.method == "OPTIONS":
            return "origin" in request.headers and "access-control-request-method" in request.headers
        path = request.path.partition("?")[0]
        if "%" in path or "\\" in path or not path.startswith(self._base_path + "/"):
            return False
        if any(segment in ("", ".", "..") for segment in path[len(self._base_path) + 1 :].rstrip("/").split("/")):
            return False
        relative = path[len(self._base_path) :].rstrip("/") or "/"
        for route in self._routes:
            if request.method not in route.methods:
                continue
            if relative == route.path:
                return True
            if route.prefix and relative.startswith(route.path.rstrip("/") + "/"):
                return True
        return False
