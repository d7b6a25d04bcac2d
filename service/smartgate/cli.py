"""The ``smartgate`` command: serve, check-config, explain, envoy-config, dev-token, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from smartgate.config.model import Config, unix_socket_path
from smartgate.config.parse import ConfigError, load_config
from smartgate.core.http import HttpRequest
from smartgate.dev.keys import DEV_ISSUER, dev_token
from smartgate.envoy_glue.bootstrap import EnvoySettings, render_yaml
from smartgate.envoy_glue.check_response import ResponseBuilder


def _config_or_exit(path: str | None) -> Config:
    path = path or os.environ.get("SMARTGATE_CONFIG")
    if not path:
        sys.exit("smartgate: no config: pass --config FILE or set SMARTGATE_CONFIG")
    try:
        return load_config(path)
    except ConfigError as exc:
        sys.exit(f"smartgate: invalid config {path}: {exc}")


def _cmd_serve(args: argparse.Namespace) -> int:
    path = args.config or os.environ.get("SMARTGATE_CONFIG")
    config = _config_or_exit(path)
    workers = args.workers or config.workers
    if args.worker_index is None and workers > 1:
        from smartgate.runtime.supervisor import run_supervisor

        assert path is not None
        run_supervisor(path, workers)
        return 0
    from smartgate.runtime.worker import run_worker

    run_worker(config, path, args.worker_index or 0, serve_http=not args.no_http)
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    print(f"ok: {len(config.issuers)} issuer(s), FHIR base {config.fhir.base_url}")
    return 0


async def _explain(config: Config, http: HttpRequest) -> dict[str, object]:
    from smartgate.runtime.worker import build_components, dpop_algorithms

    components = build_components(config)
    try:
        await components.load_keys()
        decision = await components.authorizer.authorize(http)
    finally:
        await components.http_client.aclose()
    response = ResponseBuilder(config.headers, config.realm, dpop_algs=dpop_algorithms(config)).build(decision)
    result: dict[str, object] = {
        "decision": "allow" if decision.allowed else "deny",
        "reason": decision.reason.code,
        "status": decision.http_status,
        "message": decision.message,
    }
    if decision.allowed:
        result["headers_set"] = {h.header.key: h.header.value for h in response.ok_response.headers}
        result["headers_removed"] = list(response.ok_response.headers_to_remove)
    else:
        result["response_headers"] = {h.header.key: h.header.value for h in response.denied_response.headers}
    return result


def _cmd_explain(args: argparse.Namespace) -> int:
    config = _config_or_exit(args.config)
    headers = {"x-request-id": "explain"}
    for item in args.header or []:
        name, _, value = item.partition(":")
        headers[name.strip().lower()] = value.strip()
    if args.token:
        headers["authorization"] = f"Bearer {args.token}"
    body = args.body.encode() if args.body is not None else None
    if body is not None:
        headers.setdefault("content-type", "application/x-www-form-urlencoded")
        headers["content-length"] = str(len(body))
    http = HttpRequest(method=args.method.upper(), path=args.url, headers=headers, body=body)
    result = asyncio.run(_explain(config, http))
    print(json.dumps(result, indent=2))
    return 0 if result["decision"] == "allow" else 1


def _cmd_envoy_config(args: argparse.Namespace) -> int:
    settings = EnvoySettings()
    if args.config:
        config = _config_or_exit(args.config)
        socket = unix_socket_path(config.listen.grpc)
        host, _, port = (config.listen.http if socket else config.listen.grpc).rpartition(":")
        settings = EnvoySettings(
            authz_host=host,
            authz_port=int(port),
            authz_socket=socket,
            authz_workers=config.workers,
            smartgate_http_port=int(config.listen.http.rpartition(":")[2]) if config.smart_configuration else None,
            upstream_url=config.fhir.upstream_url,
            base_path=config.fhir.base_path,
            max_request_bytes=config.max_request_bytes,
            response_verification=config.response_verification.mode,
            max_response_bytes=config.response_verification.max_body_bytes,
        )
    sys.stdout.write(render_yaml(settings))
    return 0


def _cmd_dev_token(args: argparse.Namespace) -> int:
    print("# development token: NOT FOR PRODUCTION", file=sys.stderr)
    print(
        dev_token(
            Path(args.key_dir),
            audience=args.audience,
            scope=args.scope,
            patient=args.patient,
            fhir_user=args.fhir_user,
            lifetime_seconds=args.lifetime,
            issuer=args.issuer,
        )
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from smartgate.dev.demo.runner import run_demo

    return run_demo(Path(args.state_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartgate", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("SMARTGATE_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the ext_authz gRPC server")
    serve.add_argument("--config", help="config file (default: $SMARTGATE_CONFIG)")
    serve.add_argument("--workers", type=int, default=None, help="worker processes (default: config 'workers')")
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--no-http", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(handler=_cmd_serve)

    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(handler=_cmd_check_config)

    explain = commands.add_parser("explain", help="decide one request without Envoy and say why")
    explain.add_argument("--config", help="config file (default: $SMARTGATE_CONFIG)")
    explain.add_argument("--token", help="the bearer token (omit to test an anonymous request)")
    explain.add_argument("--method", default="GET")
    explain.add_argument(
        "--url", required=True, help="path and query as Envoy sees it, e.g. /fhir/Observation?patient=1"
    )
    explain.add_argument("--header", action="append", help="extra header 'name: value' (repeatable)")
    explain.add_argument("--body", help="form body for POST _search")
    explain.set_defaults(handler=_cmd_explain)

    envoy = commands.add_parser("envoy-config", help="print the Envoy configuration for a smartgate config")
    envoy.add_argument("--config", help="smartgate config to take addresses from (default: shipped defaults)")
    envoy.set_defaults(handler=_cmd_envoy_config)

    token = commands.add_parser("dev-token", help="sign a development token (NOT FOR PRODUCTION)")
    token.add_argument("--key-dir", default=".smartgate-dev")
    token.add_argument("--audience", default="http://127.0.0.1:10000/fhir")
    token.add_argument("--issuer", default=DEV_ISSUER)
    token.add_argument("--scope", default="launch/patient patient/*.rs")
    token.add_argument("--patient", default="123")
    token.add_argument("--fhir-user", default=None)
    token.add_argument("--lifetime", type=int, default=3600)
    token.set_defaults(handler=_cmd_dev_token)

    demo = commands.add_parser("demo", help="run Envoy + smartgate + a demo FHIR server (make run)")
    demo.add_argument("--state-dir", default=".smartgate-dev")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGHUP, lambda signum, frame: setattr(sys, "_smartgate_early_hangup", True))
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
