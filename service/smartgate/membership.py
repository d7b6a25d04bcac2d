"""Is this resource in the patient's compartment? Asked of the FHIR server itself.

For ``GET Observation/abc`` with context patient 123 we search
``Observation?_id=abc&subject=Patient/123&_summary=count`` (and each other compartment
parameter of the type, until one finds it). Answers are cached briefly; concurrent
identical look-ups share one request. Any failure is an exception: the caller denies (503).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from smartgate import metrics
from smartgate.config import LookupConfig
from smartgate.decision import MembershipCheck
from smartgate.token_cache import ExpiringCache


class LookupError(Exception):
    """The FHIR server could not answer the membership question."""


@dataclass(frozen=True, slots=True)
class LookupResult:
    member: bool
    from_cache: bool


class MembershipLookup:
    def __init__(
        self,
        upstream_url: str,
        config: LookupConfig,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = upstream_url.rstrip("/")
        self._config = config
        self._client = client
        self._clock = clock
        self._headers: Mapping[str, str] = {"accept": "application/fhir+json", **config.headers}
        self._cache: ExpiringCache[bool] = ExpiringCache(config.cache_size)
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        self._honoured: set[tuple[str, str]] = set()

    async def is_member(self, check: MembershipCheck) -> LookupResult:
        key = f"{check.patient_id}|{check.resource_type}/{check.resource_id}"
        cached = self._cache.get(key, self._clock())
        if cached is not None:
            metrics.LOOKUPS.labels("member" if cached else "not_member", "hit").inc()
            return LookupResult(cached, True)
        inflight = self._inflight.get(key)
        if inflight is not None:
            return LookupResult(await asyncio.shield(inflight), False)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        started = time.perf_counter()
        try:
            member = await self._ask(check)
        except BaseException as exc:
            metrics.LOOKUPS.labels("error", "miss").inc()
            future.set_exception(LookupError(str(exc)) if not isinstance(exc, LookupError) else exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._inflight[key]
            metrics.LOOKUP_SECONDS.observe(time.perf_counter() - started)
        metrics.LOOKUPS.labels("member" if member else "not_member", "miss").inc()
        future.set_result(member)
        self._cache.put(key, member, self._clock() + self._config.cache_ttl_seconds)
        return LookupResult(member, False)

    async def _ask(self, check: MembershipCheck) -> bool:
        for param in check.params:
            if await self._count(check.resource_type, check.resource_id, param, check.patient_id) > 0:
                await self._ensure_server_honours(check.resource_type, check.resource_id, param)
                return True
        return False

    async def _ensure_server_honours(self, resource_type: str, resource_id: str, param: str) -> None:
        """A lenient server ignores search parameters it does not support, which would make any
        resource look like a member. Once per (type, parameter), ask with a patient that cannot
        exist: a server that still finds the resource cannot be trusted for this look-up."""
        if (resource_type, param) in self._honoured:
            return
        if await self._count(resource_type, resource_id, param, f"smartgate-probe-{uuid.uuid4().hex}") > 0:
            raise LookupError(f"the FHIR server ignores the {resource_type} {param} search parameter")
        self._honoured.add((resource_type, param))

    async def _count(self, resource_type: str, resource_id: str, param: str, patient_id: str) -> int:
        url = f"{self._base}/{resource_type}"
        query = {"_id": resource_id, param: f"Patient/{patient_id}", "_summary": "count"}
        try:
            response = await self._client.get(
                url, params=query, headers=self._headers, timeout=self._config.timeout_seconds
            )
        except httpx.HTTPError as exc:
            raise LookupError(f"{type(exc).__name__} from the FHIR server") from exc
        if response.status_code != 200:
            raise LookupError(f"the FHIR server answered {response.status_code}")
        try:
            bundle = response.json()
        except ValueError as exc:
            raise LookupError("the FHIR server did not answer JSON") from exc
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise LookupError("the FHIR server did not answer a Bundle")
        total = bundle.get("total")
        if isinstance(total, int) and not isinstance(total, bool):
            return total
        entries = bundle.get("entry", [])
        if not isinstance(entries, list):
            raise LookupError("the FHIR server answered a malformed Bundle")
        return len(entries)
