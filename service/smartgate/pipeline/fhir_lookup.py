"""Is this resource in the patient's compartment (and does it meet a granular constraint)?
Asked of the FHIR server itself.

For ``GET Observation/abc`` with context patient 123 we search
``Observation?_id=abc&subject=Patient/123&_summary=count`` (and each other compartment
parameter of the type, until one finds it). Answers are cached briefly; concurrent
identical look-ups share one request. Any failure raises FhirLookupError: the caller denies (503).

A lenient server ignores search parameters it does not support, which would make any
resource look like a member. The first time a (type, parameter) pair proves membership, the
same search is repeated with an impossible value for that parameter: a server that still
finds the resource cannot be trusted for this look-up.

Every answer is read with a size cap (``MAX_LOOKUP_BYTES``; a Binary's securityContext, asked for alone
with ``_elements``, ``MAX_BINARY_CONTEXT_BYTES``): past it the look-up fails, and the request is denied.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from smartgate.config.model import LookupConfig
from smartgate.core.expiring_cache import ExpiringCache
from smartgate.fhir.resources import resolve_reference
from smartgate.policy.plan import MembershipCheck, Query
from smartgate.telemetry import metrics
from smartgate.tokens.discovery import BodyTooLargeError, read_capped_body

# A look-up answer: a count Bundle, or a history of at most 100 versions for a vread or history check.
MAX_LOOKUP_BYTES = 16 * 1024 * 1024
# A Binary asked for its securityContext alone; a server that ignores _elements and sends the content fails.
MAX_BINARY_CONTEXT_BYTES = 64 * 1024


class FhirLookupError(Exception):
    """The FHIR server could not answer the question."""


@dataclass(frozen=True, slots=True)
class LookupResult:
    member: bool
    from_cache: bool


def _impossible(value: str) -> str:
    marker = f"smartgate-probe-{uuid.uuid4().hex}"
    if "/" in value and "|" not in value:
        return f"{value.split('/')[0]}/{marker}"
    return f"urn:smartgate:probe|{marker}"


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
        key = f"member|{check.resource_type}/{check.resource_id}|{check.queries!r}"
        return await self._cached(key, lambda: self._ask(check))

    async def exists(self, resource_type: str, resource_id: str) -> bool:
        """Has the resource ever existed (current or deleted)? Used before allowing an upsert."""
        key = f"exists|{resource_type}/{resource_id}"
        return (await self._cached(key, lambda: self._ever_existed(resource_type, resource_id))).member

    async def _cached(self, key: str, ask: Callable[[], Awaitable[bool]]) -> LookupResult:
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
            answer = await ask()
        except BaseException as exc:
            metrics.LOOKUPS.labels("error", "miss").inc()
            future.set_exception(exc if isinstance(exc, FhirLookupError) else FhirLookupError(str(exc)))
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._inflight[key]
            metrics.LOOKUP_SECONDS.observe(time.perf_counter() - started)
        metrics.LOOKUPS.labels("member" if answer else "not_member", "miss").inc()
        future.set_result(answer)
        self._cache.put(key, answer, self._clock() + self._config.cache_ttl_seconds)
        return LookupResult(answer, False)

    async def _ask(self, check: MembershipCheck) -> bool:
        for query in check.queries:
            if await self._count(check.resource_type, check.resource_id, query) > 0:
                await self._ensure_server_honours(check.resource_type, check.resource_id, query)
                return True
        return False

    async def _ensure_server_honours(self, resource_type: str, resource_id: str, query: Query) -> None:
        for index, (param, value) in enumerate(query):
            if (resource_type, param) in self._honoured:
                continue
            probe = (*query[:index], (param, _impossible(value)), *query[index + 1 :])
            if await self._count(resource_type, resource_id, probe) > 0:
                raise FhirLookupError(f"the FHIR server ignores the {resource_type} {param} search parameter")
            self._honoured.add((resource_type, param))

    async def _count(self, resource_type: str, resource_id: str, query: Query) -> int:
        params = [("_id", resource_id), *query, ("_summary", "count")]
        bundle = await self._get_json(f"{self._base}/{resource_type}", params)
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise FhirLookupError("the FHIR server did not answer a Bundle")
        total = bundle.get("total")
        if isinstance(total, int) and not isinstance(total, bool):
            return total
        entries = bundle.get("entry", [])
        if not isinstance(entries, list):
            raise FhirLookupError("the FHIR server answered a malformed Bundle")
        return len(entries)

    async def _ever_existed(self, resource_type: str, resource_id: str) -> bool:
        url = f"{self._base}/{resource_type}/{resource_id}/_history"
        status, bundle = await self._fetch(url, [("_count", "1")], MAX_LOOKUP_BYTES, absent_ok=True)
        if status in (404, 410):
            return False
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise FhirLookupError("the FHIR server did not answer a Bundle")
        return bool(bundle.get("total") or bundle.get("entry"))

    async def versions(
        self, resource_type: str, resource_id: str, version_id: str | None, limit: int = 100
    ) -> list[Any]:
        """The past versions a vread or an instance history would show (all of them, or raise)."""
        if version_id is not None:
            return [await self._get_json(f"{self._base}/{resource_type}/{resource_id}/_history/{version_id}", [])]
        bundle = await self._get_json(f"{self._base}/{resource_type}/{resource_id}/_history", [("_count", str(limit))])
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise FhirLookupError("the FHIR server did not answer a Bundle")
        entries = bundle.get("entry") or []
        total = bundle.get("total")
        more = any(isinstance(link, dict) and link.get("relation") == "next" for link in bundle.get("link") or [])
        if more or (isinstance(total, int) and total > len(entries)):
            raise FhirLookupError(f"more than {limit} versions: the history cannot be checked whole")
        return [entry.get("resource") for entry in entries if isinstance(entry, dict) and entry.get("resource")]

    async def binary_security_context(self, resource_id: str, fhir_base_url: str) -> tuple[str, str] | None:
        """The (type, id) a Binary's securityContext names, or None when it has none. Only that element is
        asked for (``_elements``): the content, base64 in the JSON, can be megabytes, and the answer is capped."""
        document = await self._get_json(
            f"{self._base}/Binary/{resource_id}", [("_elements", "securityContext")], MAX_BINARY_CONTEXT_BYTES
        )
        if not isinstance(document, dict) or document.get("resourceType") != "Binary":
            raise FhirLookupError("the FHIR server did not answer a Binary")
        context = document.get("securityContext")
        reference = context.get("reference") if isinstance(context, dict) else None
        if not isinstance(reference, str):
            return None
        resolved = resolve_reference(reference, fhir_base_url)
        return (resolved.resource_type, resolved.resource_id) if resolved else None

    async def _get_json(self, url: str, params: list[tuple[str, str]], max_bytes: int = MAX_LOOKUP_BYTES) -> Any:
        return (await self._fetch(url, params, max_bytes))[1]

    async def _fetch(
        self, url: str, params: list[tuple[str, str]], max_bytes: int, absent_ok: bool = False
    ) -> tuple[int, Any]:
        """(status, parsed JSON) of a 200 answer read no further than ``max_bytes``; with ``absent_ok`` a
        404 or 410 is answered as (status, None). Anything else raises FhirLookupError."""
        try:
            async with self._client.stream(
                "GET", url, params=tuple(params), headers=self._headers, timeout=self._config.timeout_seconds
            ) as response:
                if absent_ok and response.status_code in (404, 410):
                    return response.status_code, None
                if response.status_code != 200:
                    raise FhirLookupError(f"the FHIR server answered {response.status_code}")
                body = await read_capped_body(response, max_bytes)
        except httpx.HTTPError as exc:
            raise FhirLookupError(f"{type(exc).__name__} from the FHIR server") from exc
        except BodyTooLargeError as exc:
            raise FhirLookupError(f"the FHIR server answered {exc}") from exc
        try:
            return 200, orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise FhirLookupError("the FHIR server did not answer JSON") from exc
