"""Profile smartgate (1 worker) under wrk at 16 connections, cached-token patient search, with
py-spy: where does a Check spend its time? Writes bench/results/profile.md (top functions by own
time) and profile-flamegraph.svg.

``--gil`` samples only the thread holding the GIL (profile-gil.md): under grpc.aio the event loop,
gRPC's poller thread and the decision-log writer share one GIL, and this shows who holds it.

Usage: python bench/profile_hot_path.py [--seconds 15] [--out bench/results] [--gil]
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import envoy_setups
import processes
import tokens
from load import THROUGHPUT, run_wrk, write_requests

from smartgate.fhir.compartment import MEMBERSHIP_PARAMS

SEARCH = "/fhir/Observation?patient=123"
AUDIENCE = "https://bench.smartgate.invalid/fhir"


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        sys.exit("py-spy is not installed (pip install py-spy)")
    return found


def _top(raw: Path, limit: int = 25) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """(own samples per function, samples per smartgate function anywhere on the stack, total)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if "smartgate" in frame:
                inclusive[frame] += count
    return own.most_common(limit), inclusive.most_common(limit), total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (where the GIL goes), into profile-gil.md",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    spy = _py_spy()
    with tempfile.TemporaryDirectory(prefix="smartgate-profile-") as tmp:
        workdir = Path(tmp)
        keys = tokens.new_keys()
        (workdir / "jwks.json").write_text(json.dumps(keys.jwks()), encoding="utf-8")
        token = tokens.sign(keys, "ES256", AUDIENCE)
        fhir_port, fhir_admin = processes.free_port(), processes.free_port()
        grpc_port, http_port = processes.free_port_pair(), processes.free_port()
        envoy_port, admin_port = processes.free_port(), processes.free_port()
        stand_in = envoy_setups.fhir_stand_in_config(fhir_port, fhir_admin, MEMBERSHIP_PARAMS["Observation"])
        config = processes.smartgate_config(
            grpc_port, http_port, AUDIENCE, f"http://127.0.0.1:{fhir_port}/fhir", tokens.ISSUER, workdir / "jwks.json"
        )
        plan = write_requests(workdir / "plan.txt", [(SEARCH, "fixed")])
        with (
            processes.envoy(stand_in, workdir, "fhir"),
            processes.smartgate(config, workdir) as smartgate,
            processes.envoy(envoy_setups.ext_authz_config(envoy_port, admin_port, grpc_port), workdir, "envoy"),
        ):
            url = f"http://127.0.0.1:{envoy_port}"
            run_wrk(url, THROUGHPUT, 2, plan, token=token)  # warm up
            raw = workdir / "profile.txt"
            svg = out / ("profile-gil-flamegraph.svg" if args.gil else "profile-flamegraph.svg")
            spy_cmd = [
                spy,
                "record",
                "--pid",
                str(smartgate.pid),
                "--rate",
                "250",
                "--nonblocking",
                "--duration",
                str(int(args.seconds)),
                "--format",
                "raw",
                "--output",
                str(raw),
                *(["--gil"] if args.gil else []),
            ]
            recorder = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603
            time.sleep(0.5)
            figures = run_wrk(url, THROUGHPUT, args.seconds - 1, plan, token=token)
            recorder.wait(timeout=args.seconds + 30)
            subprocess.run(  # noqa: S603 - py-spy with arguments we built
                [
                    spy,
                    "record",
                    "--pid",
                    str(smartgate.pid),
                    "--rate",
                    "250",
                    "--nonblocking",
                    "--duration",
                    "5",
                    "--output",
                    str(svg),
                    *(["--gil"] if args.gil else []),
                ],
                check=False,
                capture_output=True,
            )
        own, inclusive, total = _top(raw)
    what = (
        "only the thread holding the GIL is sampled: each sample is GIL time, the share is of all GIL time"
        if args.gil
        else "idle samples included: the event loop waiting in epoll is the gap to a saturated core"
    )
    lines = [
        f"# Where smartgate's {'GIL' if args.gil else 'time'} goes (py-spy, cached-token patient search, wrk c16)",
        "",
        f"{figures['rps']:.0f} requests/s through Envoy during the profile; {total} samples at 250 Hz ({what}).",
        "",
        "## Own time (top functions)",
        "",
        "| samples | share | function |",
        "| ---: | ---: | --- |",
        *(f"| {count} | {count / total:.1%} | `{name}` |" for name, count in own),
        "",
        "## smartgate functions, anywhere on the stack",
        "",
        "| samples | share | function |",
        "| ---: | ---: | --- |",
        *(f"| {count} | {count / total:.1%} | `{name}` |" for name, count in inclusive),
    ]
    (out / ("profile-gil.md" if args.gil else "profile.md")).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[:40]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
