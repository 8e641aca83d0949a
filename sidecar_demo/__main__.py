"""Command line of the demo stack: ``run`` (everything) and ``models`` (servers only)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sidecar_demo.model_server import serve_forever
from sidecar_demo.stack import ENVOY_LISTENER, DemoStack, StackError, StackLayout
from sidecar_demo.tokens import demo_tenant_token

_CURL = """\
  curl -s http://{listen}/v1/chat/completions \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"model": "chat", "messages": [{{"role": "user", "content": "Hello"}}]}}'"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar_demo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start model servers, sidecar and Envoy")
    run.add_argument("--policy", type=Path, default=Path("examples/policy.yaml"))
    run.add_argument("--envoy-config", type=Path, default=Path("envoy/envoy.yaml"))
    run.add_argument("--log-dir", type=Path, default=Path("run"))
    commands.add_parser("models", help="run the demo model servers only")
    token = commands.add_parser("token", help="print a demo JWT naming a tenant")
    token.add_argument("tenant", help="the tenant the token's 'tenant' claim names")
    args = parser.parse_args(argv)
    if args.command == "models":
        return _run_models()
    if args.command == "token":
        print(demo_tenant_token(args.tenant, int(time.time())))
        return 0
    return _run_stack(StackLayout(args.policy, args.envoy_config, args.log_dir))


def _run_models() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve_forever())
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        loop.close()
    return 0


def _run_stack(layout: StackLayout) -> int:
    stack = DemoStack(layout)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stack.start()
    except StackError as error:
        print(f"cannot start the demo stack: {error}", file=sys.stderr)
        return 1
    listen = f"{ENVOY_LISTENER[0]}:{ENVOY_LISTENER[1]}"
    print(f"Demo stack is up: send AI requests to http://{listen} (logs in {layout.log_dir}/).")
    for key in ("sk-demo-free", "sk-demo-paid", "sk-demo-enterprise"):
        print(_CURL.format(listen=listen, key=key))
    print("Press Ctrl-C to stop.", flush=True)
    exit_code = 0
    try:
        while not stopped.wait(1.0):
            exited = stack.exited()
            if exited:
                print(f"stopping: {', '.join(exited)} exited; see {layout.log_dir}/", flush=True)
                exit_code = 1
                break
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
