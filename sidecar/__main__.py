"""The command line: serve, check, envoy-chains, hash-key, health, plan and simulate.

``serve`` loads and checks the policy here, then either supervises worker processes
(:mod:`sidecar.workers`) or runs one sidecar (:mod:`sidecar.serve`, which wires the
servers together).
"""

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sidecar import __version__
from sidecar.core.chains import failover_chains
from sidecar.core.identity import key_digest
from sidecar.core.router import ActivePolicy
from sidecar.logs import configure_logging
from sidecar.planning.plan import cheapest_meeting, plan, render_table, write_json
from sidecar.planning.simulate import load_failures, simulate
from sidecar.planning.simulate import render as render_report
from sidecar.planning.traffic import TrafficError, load_traffic
from sidecar.policy.envoy_chains import ChainOptions, render_aggregates
from sidecar.policy.envoy_check import check_envoy_config
from sidecar.policy.loader import load_policy, resolve_credentials
from sidecar.policy.problems import PolicyError
from sidecar.serve import ServeOptions, serve
from sidecar.state.factory import (
    StoreConfigError,
    redis_url_of,
)
from sidecar.workers import WorkersError, check_address, supervise, worker_admin

DEFAULT_LISTEN = "unix-abstract:ai-sidecar"
DEFAULT_ADMIN = "127.0.0.1:9902"
EXIT_BAD_INPUT = 2

log = logging.getLogger("sidecar")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command named on the command line; return the process exit code."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    handler = {
        "serve": _serve_command,
        "check": _check_command,
        "envoy-chains": _envoy_chains_command,
        "hash-key": _hash_key_command,
        "health": _health_command,
        "plan": _plan_command,
        "simulate": _simulate_command,
    }[args.command]
    return handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar",
        description="The AI routing sidecar for Envoy: serve it, check a policy, plan and "
        "simulate one before deploy.",
    )
    parser.add_argument("--version", action="version", version=f"ai-sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the ext_proc service")
    serve.add_argument("--policy", type=Path, required=True, help="policy YAML file")
    serve.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help=f"gRPC address: host:port, unix:/path or unix-abstract:name ({DEFAULT_LISTEN})",
    )
    serve.add_argument(
        "--admin",
        default=DEFAULT_ADMIN,
        type=_admin_address,
        help=f"admin HTTP host:port, or 'off' ({DEFAULT_ADMIN})",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.add_argument(
        "--decision-log",
        default="info",
        choices=["debug", "info", "off"],
        help="level of the per-request decision log line (info)",
    )
    serve.add_argument(
        "--grace", type=float, default=10.0, help="seconds open streams get on shutdown (10)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="sidecar processes sharing a TCP --listen address with SO_REUSEPORT (1)",
    )
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument(
        "--envoy-config",
        type=Path,
        default=None,
        help="Envoy config to check the policy against, at start and on every reload",
    )
    serve.add_argument(
        "--watch",
        type=float,
        default=1.0,
        help="seconds between checks of the policy file for changes; 0: only SIGHUP (1)",
    )

    check = commands.add_parser("check", help="validate a policy file without serving")
    check.add_argument("policy", type=Path)
    check.add_argument(
        "--envoy-config", type=Path, help="also check the policy against this Envoy config"
    )

    chains = commands.add_parser(
        "envoy-chains", help="print the Envoy aggregate clusters the policy's failover needs"
    )
    chains.add_argument("--policy", type=Path, required=True, help="policy YAML file")
    chains.add_argument(
        "--sidecar-cluster", default="ai_sidecar", help="Envoy cluster of the sidecar (ai_sidecar)"
    )
    chains.add_argument(
        "--budget-percent",
        type=float,
        default=20.0,
        help="retries may add this percentage of the requests in flight (20)",
    )
    chains.add_argument(
        "--min-retry-concurrency",
        type=int,
        default=10,
        help="retries allowed at once whatever the percentage (10)",
    )

    hash_key = commands.add_parser("hash-key", help="print the policy entry for an API key")
    hash_key.add_argument("key", nargs="?", help="the key (prompted for when omitted)")

    health = commands.add_parser("health", help="exit 0 if the gRPC service reports SERVING")
    health.add_argument("--address", default=DEFAULT_LISTEN, help="gRPC target to ask")
    health.add_argument("--timeout", type=float, default=2.0)

    planner = commands.add_parser(
        "plan", help="monthly cost, p95 and accuracy of the policy for a traffic mix"
    )
    planner.add_argument("--policy", type=Path, required=True, help="policy YAML file")
    planner.add_argument("--traffic", type=Path, required=True, help="traffic mix YAML file")
    planner.add_argument("--json", type=Path, default=None, help="also write the results here")

    simulator = commands.add_parser(
        "simulate", help="a day of traffic and failures through the routing core, fake clock"
    )
    simulator.add_argument("--policy", type=Path, required=True, help="policy YAML file")
    simulator.add_argument("--traffic", type=Path, required=True, help="traffic mix YAML file")
    simulator.add_argument("--failures", type=Path, required=True, help="failure script YAML")
    simulator.add_argument("--seed", type=int, default=1, help="random seed (1)")
    simulator.add_argument("--json", type=Path, default=None, help="also write the report here")
    return parser


def _plan_command(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.policy)
        traffic = load_traffic(args.traffic)
        results = plan(policy, traffic)
    except PolicyError as error:
        print(error.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrafficError as error:
        print(f"plan: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(render_table(results, traffic))
    if args.json is not None:
        write_json(results, args.json)
        print(f"written: {args.json}")
    return 0 if cheapest_meeting(results) is not None else 1


def _simulate_command(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.policy)
        traffic = load_traffic(args.traffic)
        duration_s, failures = load_failures(args.failures, policy)
    except PolicyError as error:
        print(error.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except (TrafficError, OSError) as error:
        print(f"simulate: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Simulated calls carry no credential: stand-ins keep credential_env checks quiet.
    stand_ins = {spec.credential_env: "simulated" for spec in policy.clusters.values()}
    credentials = resolve_credentials(policy, {k: v for k, v in stand_ins.items() if k}, "")
    report = simulate(ActivePolicy(policy, credentials), traffic, duration_s, failures, args.seed)
    print(render_report(report, duration_s))
    if args.json is not None:
        args.json.write_text(json.dumps(report.summary(), indent=2) + "\n")
        print(f"written: {args.json}")
    return 0


def _admin_address(value: str) -> str:
    """``host:port`` (IPv6 hosts in brackets) or ``off``; refused clearly otherwise."""
    if value == "off":
        return value
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected host:port or 'off', got {value!r}")
    return value


def _check_command(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.policy)
    except PolicyError as error:
        print(error.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.envoy_config is not None:
        problems = check_envoy_config(policy, args.envoy_config)
        if problems:
            print(PolicyError(str(args.policy), problems).render(), file=sys.stderr)
            return EXIT_BAD_INPUT
    print(
        f"{args.policy}: ok (policy {policy.digest}: {len(policy.tenants)} tenants, "
        f"{len(policy.tiers)} tiers, {len(policy.models)} models, "
        f"{len(policy.clusters)} clusters)"
    )
    return 0


def _envoy_chains_command(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.policy)
    except PolicyError as error:
        print(error.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    if not 0 < args.budget_percent <= 100 or args.min_retry_concurrency < 0:
        print("--budget-percent must be in (0, 100], --min-retry-concurrency >= 0", file=sys.stderr)
        return EXIT_BAD_INPUT
    options = ChainOptions(
        sidecar_cluster=args.sidecar_cluster,
        budget_percent=args.budget_percent,
        min_retry_concurrency=args.min_retry_concurrency,
    )
    print(render_aggregates(failover_chains(policy), str(args.policy), options), end="")
    return 0


def _hash_key_command(args: argparse.Namespace) -> int:
    key = args.key if args.key is not None else _read_key()
    if not key:
        print("no key given", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"sha256:{key_digest(key)}")
    return 0


def _read_key() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("API key: ").strip()
    return sys.stdin.readline().strip()


def _health_command(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(args.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}", file=sys.stderr)
            return 1
    serving = answer.status == health_pb2.HealthCheckResponse.SERVING
    print("serving" if serving else "not serving")
    return 0 if serving else 1


def _serve_command(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    admin = None if args.admin == "off" else args.admin
    try:
        check_address(args.listen, args.workers)
    except WorkersError as error:
        print(f"serve: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.worker_index is not None:
        admin = worker_admin(admin, args.worker_index)
    options = ServeOptions(
        args.policy,
        args.listen,
        admin,
        args.grace,
        args.decision_log,
        args.worker_index,
        args.watch,
        args.envoy_config,
    )
    try:
        policy = load_policy(options.policy_path)
        credentials = resolve_credentials(policy, os.environ, str(options.policy_path))
    except PolicyError as error:
        problems = [problem.render(error.source_name) for problem in error.problems]
        log.error("policy refused", extra={"problems": problems})
        print(error.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    active = ActivePolicy(policy, credentials)
    if args.envoy_config is not None:
        envoy_problems = check_envoy_config(policy, args.envoy_config)
        if envoy_problems:
            for problem in envoy_problems:
                print(problem.render(str(options.policy_path)), file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        redis_url_of(policy.store, os.environ)
    except StoreConfigError as error:
        print(f"{options.policy_path}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.workers > 1 and args.worker_index is None:
        return supervise(args.argv, args.workers)
    if args.worker_index is not None and policy.budgets and not policy.store.shared:
        log.warning(
            "each worker counts budgets and rate limits alone: use state.store redis to "
            "share them between workers",
            extra={"worker": args.worker_index},
        )
    try:
        asyncio.run(serve(options, active))
    except (OSError, RuntimeError) as error:
        log.error("cannot start: %s", error)
        print(f"cannot start: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
