"""Turn the benchmark's raw runs into results.md, latency.png, and the sanity checks of a run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

MB = 1024 * 1024
REFERENCE_WORKLOAD = "search_cached"  # A and C do no per-workload work: measured once, here
LOADS = ("c1", "c16")
LOAD_TITLES = {"c1": "1 connection", "c16": "16 connections"}


def _find(runs: list[dict[str, Any]], setup: str, workload: str, load: str) -> dict[str, Any] | None:
    return next((r for r in runs if r["setup"] == setup and r["workload"] == workload and r["load"] == load), None)


def floor(runs: list[dict[str, Any]], load: str) -> dict[str, float] | None:
    """The better of the two floor servers, per figure: most requests/s, lowest percentiles."""
    found = [r for r in (_find(runs, s, REFERENCE_WORKLOAD, load) for s in ("C-aio", "C-threaded")) if r]
    if not found:
        return None
    return {"rps": max(r["rps"] for r in found), **{p: min(r[p] for r in found) for p in ("p50", "p90", "p99")}}


def _ms(microseconds: float) -> str:
    return f"{microseconds / 1000:.2f}"


def _ratio(top: float | None, bottom: float | None) -> str:
    if top is None or not bottom:
        return "n/a"
    return f"{top / bottom:.2f}"


def _workloads_in(runs: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["workload"] for r in runs))


def _main_table(runs: list[dict[str, Any]], titles: Mapping[str, str]) -> list[str]:
    lines = ["| workload | load | setup | requests/s | p50 ms | p90 ms | p99 ms | p50 added over A (ms) | non-2xx | "
             "token cache hits |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for workload in _workloads_in(runs):
        for load in LOADS:
            base = _find(runs, "A", REFERENCE_WORKLOAD, load)
            for setup, title in titles.items():
                run = _find(runs, setup, workload, load)
                if run is None:
                    if setup == "B" and _find(runs, "B", REFERENCE_WORKLOAD, load):
                        lines.append(f"| {workload} | {load} | {title} | n/a | n/a | n/a | n/a | n/a | | |")
                    continue
                added = _ms(run["p50"] - base["p50"]) if base else "n/a"
                hits = run.get("token_cache_hit_ratio")
                lines.append(
                    f"| {workload} | {load} | {title} | {run['rps']:.0f} | {_ms(run['p50'])} | {_ms(run['p90'])} | "
                    f"{_ms(run['p99'])} | {added} | {run['non_2xx']} | {'' if hits is None else f'{hits:.0%}'} |")
    return lines


def _ratio_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| workload | load | D/C req/s | E/C req/s | D/B req/s | E/D req/s | added p50 C (ms) "
             "| added p50 D (ms) | D added / C added |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for workload in _workloads_in(runs):
        for load in LOADS:
            d, e = _find(runs, "D", workload, load), _find(runs, "E", workload, load)
            b, a, c = _find(runs, "B", workload, load), _find(runs, "A", REFERENCE_WORKLOAD, load), floor(runs, load)
            if d is None:
                continue
            c_added = c["p50"] - a["p50"] if a and c else None
            d_added = d["p50"] - a["p50"] if a else None
            lines.append(
                f"| {workload} | {load} | {_ratio(d['rps'], c['rps'] if c else None)} | "
                f"{_ratio(e['rps'] if e else None, c['rps'] if c else None)} | "
                f"{_ratio(d['rps'], b['rps'] if b else None)} | {_ratio(e['rps'] if e else None, d['rps'])} | "
                f"{_ms(c_added) if c_added is not None else 'n/a'} | "
                f"{_ms(d_added) if d_added is not None else 'n/a'} | "
                f"{_ratio(d_added, c_added) if c_added and c_added > 0 else 'n/a'} |")
    return lines


def targets(raw: Mapping[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the issue's targets that the load test decides."""
    runs = raw["runs"]
    rows: list[tuple[str, str, bool | None]] = []
    d16, c16 = _find(runs, "D", REFERENCE_WORKLOAD, "c16"), floor(runs, "c16")
    if d16 and c16:
        ratio = d16["rps"] / c16["rps"]
        rows.append(("throughput at 16 connections: D ≥ 0.85 x C", f"D/C = {ratio:.2f}", ratio >= 0.85))
    d1, c1 = _find(runs, "D", REFERENCE_WORKLOAD, "c1"), floor(runs, "c1")
    a1 = _find(runs, "A", REFERENCE_WORKLOAD, "c1")
    if d1 and c1 and a1:
        d_added, c_added = d1["p50"] - a1["p50"], c1["p50"] - a1["p50"]
        rows.append(("added p50 at 1 connection: D ≤ 1.2 x C",
                     f"D +{_ms(d_added)} ms, C +{_ms(c_added)} ms ({d_added / c_added:.2f}x)" if c_added > 0 else "n/a",
                     d_added <= 1.2 * c_added if c_added > 0 else None))
    e16 = _find(runs, "E", REFERENCE_WORKLOAD, "c16")
    if d16 and e16:
        rows.append(("E ≥ D in throughput (16 connections)", f"E/D = {e16['rps'] / d16['rps']:.2f}",
                     e16["rps"] >= d16["rps"]))
    memory = raw.get("memory")
    if memory:
        rows.append((f"memory: RSS < cache bound + 100 MB after {memory['tokens_sent']} distinct tokens",
                     f"peak {memory['rss_peak'] / MB:.0f} MB < {memory['cache_bound_bytes'] / MB:.0f} + 100 MB",
                     memory["rss_under_bound"]))
        rows.append(("memory: no growth once the token cache is full",
                     f"{memory['growth_after_full'] / MB:+.1f} MB after full", memory["no_growth_after_full"]))
    return rows


def markdown(raw: Mapping[str, Any], titles: Mapping[str, str], workload_titles: Mapping[str, str]) -> str:
    meta, runs = raw["meta"], raw["runs"]
    lines = [
        "# smartgate benchmark results", "",
        f"Run {meta['started']} UTC on {meta['cpus']}, Python {meta['python']}; {meta['duration_seconds']} s per "
        f"measured run; wrk with `-c1 -t1` (c1) and `-c16 -t2` (c16){' — SMOKE RUN' if meta['smoke'] else ''}. "
        "Envoy answers the route itself (`direct_response`), so only authorization is measured. A and C do no "
        f"per-workload work and are measured once (workload `{REFERENCE_WORKLOAD}`); C is the better of the "
        "grpc.aio and the grpcio-threaded no-op server per figure. n/a: the setup cannot do the workload "
        "(jwt_authn has no compartment look-ups).", "",
        "Workloads:", "",
        *[f"- `{name}`: {workload_titles.get(name, name)}" for name in _workloads_in(runs)], "",
        "## Targets", "", "| target | measured | met |", "| --- | --- | --- |",
        *[f"| {t} | {m} | {'yes' if ok else ('n/a' if ok is None else '**no**')} |" for t, m, ok in targets(raw)], "",
        "## Ratios", "", *_ratio_table(runs), "",
        "## Requests/s and latency", "", *_main_table(runs, titles), "",
    ]
    memory = raw.get("memory")
    if memory:
        lines += [
            "## Memory under token churn", "",
            f"{memory['tokens_sent']} distinct valid ES256 tokens through Envoy to smartgate (1 worker) at "
            f"{memory['rps']:.0f} req/s. Verified-token cache bound: `tokens.cache_size` = {memory['cache_size']} "
            f"entries x {memory['bytes_per_entry']} B measured per entry = {memory['cache_bound_bytes'] / MB:.1f} MB.",
            "", "| moment | RSS (MB) |", "| --- | ---: |",
            f"| start (before traffic) | {memory['rss_start'] / MB:.1f} |",
            f"| after warm-up | {memory['rss_warm'] / MB:.1f} |",
            f"| cache full | {memory['rss_full'] / MB:.1f} |",
            f"| end | {memory['rss_end'] / MB:.1f} |",
            f"| peak | {memory['rss_peak'] / MB:.1f} |", "",
        ]
    cost = raw.get("response_check")
    if cost:
        lines += ["## Response verification cost (pure check, no Envoy)", "",
                  "| resources | body KB | check p50 (ms) | µs per KB |", "| ---: | ---: | ---: | ---: |",
                  *[f"| {r['resources']} | {r['kb']:.1f} | {r['p50_ms']:.3f} | {r['us_per_kb']:.1f} |" for r in cost],
                  ""]
    return "\n".join(lines)


def chart(raw: Mapping[str, Any], titles: Mapping[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = raw["runs"]
    workloads = _workloads_in(runs)
    setups = [s for s in titles if any(r["setup"] == s for r in runs)]
    figure, axes = plt.subplots(len(LOADS), 1, figsize=(max(8, 2.2 * len(workloads)), 4.2 * len(LOADS)),
                                squeeze=False)
    width = 0.8 / max(1, len(setups))
    for row, load in enumerate(LOADS):
        axis = axes[row][0]
        for index, setup in enumerate(setups):
            xs, p50, p90, p99 = [], [], [], []
            for position, workload in enumerate(workloads):
                run = _find(runs, setup, workload, load)
                if run:
                    xs.append(position + (index - (len(setups) - 1) / 2) * width)
                    p50.append(run["p50"] / 1000)
                    p90.append(run["p90"] / 1000)
                    p99.append(run["p99"] / 1000)
            if not xs:
                continue
            bars = axis.bar(xs, p50, width, label=titles[setup])
            axis.scatter(xs, p90, marker="^", s=14, color=bars.patches[0].get_facecolor(), edgecolors="black",
                         linewidths=0.4, zorder=3)
            axis.scatter(xs, p99, marker="v", s=14, color=bars.patches[0].get_facecolor(), edgecolors="black",
                         linewidths=0.4, zorder=3)
        axis.set_xticks(range(len(workloads)), workloads, fontsize=8)
        axis.set_yscale("log")
        axis.set_ylabel("latency (ms, log)")
        axis.set_title(f"{LOAD_TITLES[load]}: bar = p50, ▲ = p90, ▼ = p99")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def failures(raw: Mapping[str, Any], deny_shares: Mapping[str, float]) -> list[str]:
    """What would make the run's figures meaningless: no traffic, socket errors, wrong allow/deny mix."""
    problems = []
    for run in raw["runs"]:
        where = f"{run['setup']} {run['workload']} {run['load']}"
        if run["requests"] <= 0 or run["rps"] <= 0:
            problems.append(f"{where}: no requests completed")
            continue
        if run["socket_errors"] > 0.01 * run["requests"]:
            problems.append(f"{where}: {run['socket_errors']} socket errors")
        expected = deny_shares.get(run["workload"], 0.0)
        if run["setup"] in ("A", "C-aio", "C-threaded"):
            expected = 0.0
        share = run["non_2xx"] / run["requests"]
        if abs(share - expected) > 0.1:
            problems.append(f"{where}: {share:.0%} denied, expected {expected:.0%}")
    memory = raw.get("memory")
    if memory:
        if memory["tokens_sent"] < 0.95 * memory["tokens_planned"]:
            problems.append(f"memory: only {memory['tokens_sent']} of {memory['tokens_planned']} tokens verified")
        if memory["non_2xx"]:
            problems.append(f"memory: {memory['non_2xx']} valid tokens denied")
    return problems
