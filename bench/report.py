"""Turn the benchmark's raw runs into results.md, latency.png, and the sanity checks of a run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

MB = 1024 * 1024
REFERENCE_WORKLOAD = "search_cached"  # A and C do no per-workload work: measured once, here
LOADS = ("c1", "c16")
LOAD_TITLES = {"c1": "1 connection", "c16": "16 connections"}
BUSY_MICROSECONDS = (50, 100, 200)  # the busy no-op yardstick: C-busyN busy-waits N µs per Check (C-aio is N = 0)
BUSY_TARGET_US = 50  # issue 16: smartgate should score like a no-op busy for at most this long


def is_generic(setup: str) -> bool:
    """A and every C setup do no per-workload work: measured once, on the reference workload."""
    return setup == "A" or setup.startswith("C-")


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
    lines = [
        "| workload | load | setup | requests/s | p50 ms | p90 ms | p99 ms | p50 added over A (ms) | non-2xx | "
        "token cache hits |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
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
                    f"{_ms(run['p99'])} | {added} | {run['non_2xx']} | {'' if hits is None else f'{hits:.0%}'} |"
                )
    return lines


def _ratio_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| workload | load | D/C req/s | E/C req/s | D/B req/s | E/D req/s | added p50 C (ms) "
        "| added p50 D (ms) | D added / C added |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
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
                f"{_ratio(d_added, c_added) if c_added and c_added > 0 else 'n/a'} |"
            )
    return lines


def busy_points(runs: list[dict[str, Any]], load: str, figure: str) -> list[tuple[float, float]]:
    """(busy µs per Check, figure) of the busy no-op yardstick, N = 0 being the grpc.aio floor."""
    setups = [(0, "C-aio"), *((us, f"C-busy{us}") for us in BUSY_MICROSECONDS)]
    found = ((us, _find(runs, setup, REFERENCE_WORKLOAD, load)) for us, setup in setups)
    return [(float(us), float(run[figure])) for us, run in found if run]


def equivalent_busy_us(points: list[tuple[float, float]], value: float, falling: bool) -> float | None:
    """Where ``value`` lies on the yardstick: the busy µs of a least-squares line through its points, so one
    noisy point does not decide. ``falling`` (requests/s): the line is fitted to the time per request,
    1/rps, which grows linearly with the busy time; latency is fitted as it is. 0 when it is as good as
    the no-op; None without two points or when noise leaves the curve flat or upside down."""
    if len(points) < 2:
        return None
    xs = [x for x, _ in points]
    ys = [1 / y if falling else y for _, y in points]
    target = 1 / value if falling else value
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    if slope <= 0:
        return None
    return max(0.0, mean_x + (target - mean_y) / slope)


def _busy_text(microseconds: float | None) -> str:
    if microseconds is None:
        return "n/a (the curve is flat: too noisy)"
    beyond = " (extrapolated)" if microseconds > BUSY_MICROSECONDS[-1] else ""
    return f"{microseconds:.0f} µs{beyond}"


def _yardstick(runs: list[dict[str, Any]], titles: Mapping[str, str]) -> list[str]:
    """The busy no-op table and where smartgate's (D, E) figures fall on it."""
    rps, p50 = busy_points(runs, "c16", "rps"), busy_points(runs, "c1", "p50")
    if len(rps) < 2:
        return []
    a1 = _find(runs, "A", REFERENCE_WORKLOAD, "c1")
    base = a1["p50"] if a1 else 0
    latency = dict(p50)
    lines = [
        "## Busy no-op yardstick",
        "",
        "The grpc.aio no-op server busy-waiting N µs of Python per Check. Where smartgate's figures fall on "
        'this curve is its cost in place, in "equivalent busy µs" (GIL contention with gRPC\'s poller '
        "included, which a micro-benchmark does not see): a least-squares line through the points, fitted to "
        "the time per request (1/throughput) at 16 connections and to the p50 at 1 connection.",
        "",
        "| setup | busy µs per Check | c16 requests/s | c1 p50 added over A (ms) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for us, value in rps:
        added = _ms(latency[us] - base) if us in latency and a1 else "n/a"
        lines.append(
            f"| {titles.get('C-aio' if us == 0 else f'C-busy{us:.0f}', '')} | {us:.0f} | {value:.0f} | {added} |"
        )
    for setup in ("D", "E"):
        d16, d1 = _find(runs, setup, REFERENCE_WORKLOAD, "c16"), _find(runs, setup, REFERENCE_WORKLOAD, "c1")
        if d16 is None:
            continue
        by_rps = _busy_text(equivalent_busy_us(rps, d16["rps"], falling=True))
        by_p50 = _busy_text(equivalent_busy_us(p50, d1["p50"], falling=False)) if d1 else "n/a"
        added = _ms(d1["p50"] - base) if d1 and a1 else "n/a"
        lines.append(
            f"| {titles.get(setup, setup)} | like {by_rps} (c16 req/s), {by_p50} (c1 p50) | "
            f"{d16['rps']:.0f} | {added} |"
        )
    return [*lines, ""]


def _pair_table(runs: list[dict[str, Any]], first: str, second: str, names: tuple[str, str]) -> list[str]:
    """Two setups on every workload and load both ran: requests/s, p50 and their ratio (second / first)."""
    lines = [
        f"| workload | load | {names[0]} req/s | {names[1]} req/s | {names[1]}/{names[0]} | "
        f"p50 {names[0]} (ms) | p50 {names[1]} (ms) | p50 difference (ms) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workload in _workloads_in(runs):
        for load in LOADS:
            a, b = _find(runs, first, workload, load), _find(runs, second, workload, load)
            if a is None or b is None:
                continue
            lines.append(
                f"| {workload} | {load} | {a['rps']:.0f} | {b['rps']:.0f} | {_ratio(b['rps'], a['rps'])} | "
                f"{_ms(a['p50'])} | {_ms(b['p50'])} | {(b['p50'] - a['p50']) / 1000:+.2f} |"
            )
    return lines if len(lines) > 2 else []


def _transport_and_verification(runs: list[dict[str, Any]]) -> list[str]:
    """Issue 16 items 4 and 5: Envoy to smartgate over a Unix socket against loopback TCP, and what
    response verification in enforce mode costs on each workload."""
    lines: list[str] = []
    uds = _pair_table(runs, "D", "D-uds", ("TCP", "UDS"))
    if uds:
        lines += [
            "## Unix domain socket against loopback TCP",
            "",
            "D with smartgate's gRPC listener on loopback TCP (`listen.grpc: 127.0.0.1:port`) and on a Unix "
            "socket (`unix:/path`, Envoy's `pipe` address); same run, same workload.",
            "",
            *uds,
            "",
        ]
    verification = _pair_table(runs, "F-off", "F-enforce", ("off", "enforce"))
    if verification:
        lines += [
            "## Response verification: off against enforce",
            "",
            "Setups F route to a FHIR stand-in (an Envoy answering at once with the patient's resources) so "
            "responses pass through ext_proc. `read_new_id` off does a compartment look-up per request; with "
            "enforce the read is proven by its response (no look-up).",
            "",
            *verification,
            "",
        ]
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
        rows.append(
            (
                "added p50 at 1 connection: D ≤ 1.2 x C",
                f"D +{_ms(d_added)} ms, C +{_ms(c_added)} ms ({d_added / c_added:.2f}x)" if c_added > 0 else "n/a",
                d_added <= 1.2 * c_added if c_added > 0 else None,
            )
        )
    curve = busy_points(runs, "c16", "rps")
    if d16 and len(curve) >= 2:
        equivalent = equivalent_busy_us(curve, d16["rps"], falling=True)
        rows.append(
            (
                f"the busy no-op matching D's throughput (16 connections): ≤ {BUSY_TARGET_US} µs",
                _busy_text(equivalent),
                None if equivalent is None else equivalent <= BUSY_TARGET_US,
            )
        )
    read16 = _find(runs, "F-enforce", "read_new_id", "c16")
    if read16 and d16:
        ratio = read16["rps"] / d16["rps"]
        rows.append(
            (
                "read by id, new id each request, enforce: ≥ 0.8 x D's cached search (16 connections)",
                f"{read16['rps']:.0f} / {d16['rps']:.0f} = {ratio:.2f}",
                ratio >= 0.8,
            )
        )
    e16 = _find(runs, "E", REFERENCE_WORKLOAD, "c16")
    if d16 and e16:
        rows.append(
            ("E ≥ D in throughput (16 connections)", f"E/D = {e16['rps'] / d16['rps']:.2f}", e16["rps"] >= d16["rps"])
        )
    memory = raw.get("memory")
    if memory:
        rows.append(
            (
                f"memory: RSS < cache bound + 100 MB after {memory['tokens_sent']} distinct tokens",
                f"peak {memory['rss_peak'] / MB:.0f} MB < {memory['cache_bound_bytes'] / MB:.0f} + 100 MB",
                memory["rss_under_bound"],
            )
        )
        rows.append(
            (
                "memory: no growth once the token cache is full",
                f"{memory['growth_after_full'] / MB:+.1f} MB after full",
                memory["no_growth_after_full"],
            )
        )
    return rows


def markdown(raw: Mapping[str, Any], titles: Mapping[str, str], workload_titles: Mapping[str, str]) -> str:
    meta, runs = raw["meta"], raw["runs"]
    lines = [
        "# smartgate benchmark results",
        "",
        f"Run {meta['started']} UTC on {meta['cpus']}, Python {meta['python']}; {meta['duration_seconds']} s per "
        f"measured run; wrk with `-c1 -t1` (c1) and `-c16 -t2` (c16){' — SMOKE RUN' if meta['smoke'] else ''}. "
        "Envoy answers the route itself (`direct_response`), so only authorization is measured. A and C do no "
        f"per-workload work and are measured once (workload `{REFERENCE_WORKLOAD}`); C is the better of the "
        "grpc.aio and the grpcio-threaded no-op server per figure. n/a: the setup cannot do the workload "
        "(jwt_authn has no compartment look-ups).",
        "",
        "Workloads:",
        "",
        *[f"- `{name}`: {workload_titles.get(name, name)}" for name in _workloads_in(runs)],
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
        *[f"| {t} | {m} | {'yes' if ok else ('n/a' if ok is None else '**no**')} |" for t, m, ok in targets(raw)],
        "",
        "## Ratios",
        "",
        *_ratio_table(runs),
        "",
        *_yardstick(runs, titles),
        *_transport_and_verification(runs),
        "## Requests/s and latency",
        "",
        *_main_table(runs, titles),
        "",
    ]
    memory = raw.get("memory")
    if memory:
        lines += [
            "## Memory under token churn",
            "",
            f"{memory['tokens_sent']} distinct valid ES256 tokens through Envoy to smartgate (1 worker) at "
            f"{memory['rps']:.0f} req/s. Verified-token cache bound: `tokens.cache_size` = {memory['cache_size']} "
            f"entries x {memory['bytes_per_entry']} B measured per entry = {memory['cache_bound_bytes'] / MB:.1f} MB.",
            "",
            "| moment | RSS (MB) |",
            "| --- | ---: |",
            f"| start (before traffic) | {memory['rss_start'] / MB:.1f} |",
            f"| after warm-up | {memory['rss_warm'] / MB:.1f} |",
            f"| cache full | {memory['rss_full'] / MB:.1f} |",
            f"| end | {memory['rss_end'] / MB:.1f} |",
            f"| peak | {memory['rss_peak'] / MB:.1f} |",
            "",
        ]
    cost = raw.get("response_check")
    if cost:
        lines += [
            "## Response verification cost (pure check, no Envoy)",
            "",
            "| resources | body KB | check p50 (ms) | µs per KB |",
            "| ---: | ---: | ---: | ---: |",
            *[f"| {r['resources']} | {r['kb']:.1f} | {r['p50_ms']:.3f} | {r['us_per_kb']:.1f} |" for r in cost],
            "",
        ]
    return "\n".join(lines)


def chart(raw: Mapping[str, Any], titles: Mapping[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = raw["runs"]
    workloads = _workloads_in(runs)
    setups = [s for s in titles if any(r["setup"] == s for r in runs)]
    figure, axes = plt.subplots(len(LOADS), 1, figsize=(max(8, 2.2 * len(workloads)), 4.2 * len(LOADS)), squeeze=False)
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
            axis.scatter(
                xs,
                p90,
                marker="^",
                s=14,
                color=bars.patches[0].get_facecolor(),
                edgecolors="black",
                linewidths=0.4,
                zorder=3,
            )
            axis.scatter(
                xs,
                p99,
                marker="v",
                s=14,
                color=bars.patches[0].get_facecolor(),
                edgecolors="black",
                linewidths=0.4,
                zorder=3,
            )
        axis.set_xticks(range(len(workloads)), workloads, fontsize=8)
        axis.set_yscale("log")
        axis.set_ylabel("latency (ms, log)")
        axis.set_title(f"{LOAD_TITLES[load]}: bar = p50, ▲ = p90, ▼ = p99")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def yardstick_chart(raw: Mapping[str, Any], path: Path) -> None:
    """busy-yardstick.png: the busy no-op's c16 requests/s and c1 p50 against its busy µs per Check, with
    smartgate (D) drawn across, so the crossing reads as its equivalent busy µs. Nothing without the curve."""
    runs = raw["runs"]
    curves = {"c16": busy_points(runs, "c16", "rps"), "c1": busy_points(runs, "c1", "p50")}
    if len(curves["c16"]) < 2:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    for axis, (load, label, scale) in zip(
        axes[0], (("c16", "requests/s, 16 connections", 1.0), ("c1", "p50 ms, 1 connection", 1000.0)), strict=True
    ):
        points = curves[load]
        axis.plot([x for x, _ in points], [y / scale for _, y in points], marker="o", label="busy no-op (grpc.aio)")
        smartgate = _find(runs, "D", REFERENCE_WORKLOAD, load)
        if smartgate is not None:
            value = smartgate["rps" if load == "c16" else "p50"] / scale
            axis.axhline(value, color="tab:red", linestyle="--", label="D smartgate 1 worker")
        axis.set_xlabel("busy µs per Check")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
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
        if is_generic(run["setup"]):
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
