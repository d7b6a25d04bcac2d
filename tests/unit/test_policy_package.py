"""The policy as a package (issue 14, item 3): a dispatch table over every interaction, a Bundle rule
that takes its entry decider as a parameter, scope resolution from the grants alone, and an import
graph with no cycle and no function-level import."""

from __future__ import annotations

import ast
from pathlib import Path
from types import MappingProxyType

import pytest

import smartgate.policy
from smartgate.core.reasons import Reason
from smartgate.fhir.request import FhirRequest, Interaction
from smartgate.policy import RULES, DenyError, PolicySettings, decide
from smartgate.policy.access import UNCONSTRAINED, Access, resolve_access
from smartgate.policy.bundle import decide_bundle
from smartgate.policy.decision import Decision
from smartgate.policy.plan import Pending
from smartgate.tokens.context import TokenContext
from smartgate.tokens.scopes import parse_scopes
from tests.unit.policy_helpers import SETTINGS, body_request, token_context

POLICY_DIR = Path(smartgate.policy.__file__).parent
PACKAGE = "smartgate.policy"


def test_every_interaction_has_an_entry_in_the_dispatch_table() -> None:
    assert set(RULES) == set(Interaction)


@pytest.mark.parametrize("interaction", [Interaction.CAPABILITIES, Interaction.SMART_CONFIGURATION])
def test_public_route_interactions_reaching_the_policy_are_denied(interaction: Interaction) -> None:
    outcome = decide(FhirRequest(interaction), token_context("user/*.cruds"), SETTINGS)
    assert isinstance(outcome, Decision)
    assert outcome.reason is Reason.INTERACTION_NOT_SUPPORTED


def test_an_interaction_missing_from_the_table_is_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smartgate.policy, "RULES", MappingProxyType({}))
    outcome = decide(FhirRequest(Interaction.READ, "Observation", "1"), token_context("user/*.cruds"), SETTINGS)
    assert isinstance(outcome, Decision)
    assert outcome.reason is Reason.INTERACTION_NOT_SUPPORTED


def _batch(*urls: str) -> FhirRequest:
    entries = [{"request": {"method": "GET", "url": url}} for url in urls]
    return body_request("", "POST", {"resourceType": "Bundle", "type": "batch", "entry": entries})


def test_bundle_entries_are_decided_by_the_decider_passed_in() -> None:
    seen: list[str | None] = []

    def allow_all(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision | Pending:
        seen.append(request.resource_type)
        return Decision(Reason.ALLOWED_BY_SCOPE, "test decider", token)

    token = token_context("patient/*.rs")
    outcome = decide_bundle(_batch("Observation/1", "Condition/2"), token, SETTINGS, allow_all)
    assert isinstance(outcome, Decision)
    assert outcome.reason is Reason.ALLOWED_BUNDLE
    assert seen == ["Observation", "Condition"]


def test_an_entry_the_decider_passed_in_denies_denies_the_bundle() -> None:
    def deny_all(request: FhirRequest, token: TokenContext, settings: PolicySettings) -> Decision | Pending:
        return Decision(Reason.SCOPE_INSUFFICIENT, "test decider", token)

    with pytest.raises(DenyError) as denied:
        decide_bundle(_batch("Observation/1"), token_context("user/*.cruds"), SETTINGS, deny_all)
    assert denied.value.reason is Reason.BUNDLE_ENTRY_DENIED
    assert denied.value.message.startswith("entry 0: test decider")


def test_resolve_access_reads_the_scope_grants_alone() -> None:
    grants = parse_scopes(["patient/Observation.rs user/Condition.r"])
    assert resolve_access(grants, "Observation", "r") == Access((), UNCONSTRAINED)
    assert resolve_access(grants, "Condition", "r") == Access(UNCONSTRAINED, ())
    assert not resolve_access(grants, "Condition", "s").granted


# --- the import graph ------------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def _policy_modules() -> dict[str, ast.Module]:
    return {_module_name(path): ast.parse(path.read_text(), str(path)) for path in sorted(POLICY_DIR.glob("*.py"))}


def _imported_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement loads, with ``from package import module`` read as the module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = PACKAGE if node.level else ""
    if node.level > 1:
        package = package.rsplit(".", node.level - 1)[0]
    base = ".".join(part for part in (package, node.module or "") if part)
    return [
        f"{base}.{alias.name}" if (POLICY_DIR / f"{alias.name}.py").exists() and base == PACKAGE else base
        for alias in node.names
    ]


def _policy_edges(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for importer, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges[importer].update(name for name in _imported_names(node) if name in modules)
    return edges


def _find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """A cycle in ``edges`` as a path of module names, or [] when the graph is acyclic."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return []
        for imported in sorted(edges[module]):
            cycle = visit(imported, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return []

    for module in sorted(edges):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_policy_package_has_no_import_cycle() -> None:
    edges = _policy_edges(_policy_modules())
    assert f"{PACKAGE}.bundle" in edges[PACKAGE]  # the graph really is read
    assert _find_cycle(edges) == []


def test_only_the_dispatcher_imports_the_rule_modules() -> None:
    rule_modules = {f"{PACKAGE}.{name}" for name in ("read", "search", "write", "bundle", "operation")}
    edges = _policy_edges(_policy_modules())
    importers = {importer for importer, imported in edges.items() if imported & (rule_modules | {PACKAGE})}
    assert importers == {PACKAGE}


def test_the_policy_has_no_function_level_import() -> None:
    nested = [
        f"{name}:{node.lineno}"
        for name, tree in _policy_modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and node not in tree.body
    ]
    assert nested == []
