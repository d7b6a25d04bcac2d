"""Coverage-guided fuzzing (atheris/libFuzzer) of smartgate's whole Check path, in-process.

    python fuzz/fuzz_check_request.py [libFuzzer flags] [CORPUS_DIR ...]

Each input is a serialized CheckRequest, or (first byte ``S``) a structured input that builds a
FHIR-shaped request around the world's valid tokens. Any exception escaping Check, and any
broken invariant (see decision_oracle.py), is a crash.

Defaults added unless given: ``-artifact_prefix=fuzz/regressions/`` (crashes land there and are
replayed by tests/fuzz/test_regressions.py), and when the first corpus directory is the committed
seed corpus ``fuzz/corpus``, the untracked ``fuzz/work`` is put in front of it so that the inputs
libFuzzer discovers do not pile up in the committed seeds.
"""

from __future__ import annotations

import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import atheris  # noqa: E402

with atheris.instrument_imports(include=["smartgate"]):
    from fuzz.check_target import CheckTarget
    from fuzz.check_world import CheckWorld, write_jwks

SEEDS = os.path.join(REPO, "fuzz", "corpus")
WORK = os.path.join(REPO, "fuzz", "work")
REGRESSIONS = os.path.join(REPO, "fuzz", "regressions")


def libfuzzer_args(argv: list[str]) -> list[str]:
    args = list(argv)
    if not any(arg.startswith("-artifact_prefix=") for arg in args[1:]):
        args.insert(1, f"-artifact_prefix={REGRESSIONS}{os.sep}")
    positional = [index for index, arg in enumerate(args) if index > 0 and not arg.startswith("-")]
    if positional and os.path.abspath(args[positional[0]]) == SEEDS:
        os.makedirs(WORK, exist_ok=True)
        args.insert(positional[0], WORK)
    return args


def main() -> None:
    jwks_dir = tempfile.mkdtemp(prefix="smartgate-fuzz-")
    target = CheckTarget(CheckWorld(write_jwks(os.path.join(jwks_dir, "jwks.json"))))
    atheris.Setup(libfuzzer_args(sys.argv), target.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
