"""The `ams` command: run the local stack, its processes, and the operator's tools."""

from __future__ import annotations

import argparse
import logging

from rich.console import Console
from rich.table import Table

from ams.settings import get_settings

console = Console()


def cmd_up(args: argparse.Namespace) -> None:
    from compose.local import LocalStack

    settings = get_settings()
    console.print(f"Starting the AMS stack (data under {settings.home})")
    LocalStack(settings).up(with_services=not args.no_services)
    if not args.no_services:
        console.print(f"\nGateway: [bold]{settings.gateway_url}/v1[/bold]   (dev token: `ams token --tenant demo`)")


def cmd_setup(args: argparse.Namespace) -> None:
    from compose import kafka
    from compose.system import FOR_TESTS, REQUIRED, ensure_packages

    ensure_packages({**REQUIRED, **(FOR_TESTS if args.for_tests else {})})
    kafka.fetch_jars(get_settings())


def cmd_demo(args: argparse.Namespace) -> None:
    from ams.demo import main as demo

    demo(get_settings())


def cmd_down(args: argparse.Namespace) -> None:
    from compose.local import LocalStack

    stopped = LocalStack(get_settings()).down(args.components or None)
    console.print(f"Stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


def cmd_status(args: argparse.Namespace) -> None:
    from compose.local import LocalStack

    table = Table("component", "state", "pid", "address")
    for name, state, pid, address in LocalStack(get_settings()).status():
        colour = {"ready": "green", "stopped": "dim"}.get(state, "red")
        table.add_row(name, f"[{colour}]{state}[/{colour}]", pid, address)
    console.print(table)


def cmd_gateway(args: argparse.Namespace) -> None:
    import uvicorn

    from queries.gateway import create_app

    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.gateway_host,
        port=args.port or settings.gateway_port,
        log_level="warning",
        access_log=False,
    )


def cmd_project(args: argparse.Namespace) -> None:
    from projections.worker import run_projection

    run_projection(args.projection, get_settings())


def cmd_reindex(args: argparse.Namespace) -> None:
    from projections.reindex import VIEWS, run_reindex

    run_reindex(get_settings(), args.view or VIEWS, args.periodic)


def cmd_token(args: argparse.Namespace) -> None:
    from ams.auth import issue_dev_token

    print(issue_dev_token(get_settings(), args.tenant, args.scope, subject=args.subject, ttl=args.ttl))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ams", description="AMS, the Autonomous Memory System")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Kafka, Redis, PostgreSQL, the projectors and the gateway")
    up.add_argument("--no-services", action="store_true", help="start only Kafka, Redis and PostgreSQL")
    up.set_defaults(func=cmd_up)

    setup = sub.add_parser("setup", help="install missing system packages and fetch the Kafka jars")
    setup.add_argument("--for-tests", action="store_true", help="also what the test suite needs")
    setup.set_defaults(func=cmd_setup)

    sub.add_parser("demo", help="show an agent's writes and reads against the running stack").set_defaults(
        func=cmd_demo)

    down = sub.add_parser("down", help="stop what `ams up` started")
    down.add_argument("components", nargs="*", help="only these (default: all)")
    down.set_defaults(func=cmd_down)

    sub.add_parser("status", help="show each component and its state").set_defaults(func=cmd_status)

    gateway = sub.add_parser("gateway", help="run the HTTP gateway in the foreground")
    gateway.add_argument("--host")
    gateway.add_argument("--port", type=int)
    gateway.set_defaults(func=cmd_gateway)

    project = sub.add_parser("project", help="run a projection worker in the foreground")
    project.add_argument("projection", choices=["redis", "embedder", "milvus"])
    project.set_defaults(func=cmd_project)

    reindex = sub.add_parser("reindex", help="reconcile the vector views with the source of truth and repair them")
    reindex.add_argument("--view", action="append", choices=["faiss", "milvus"], help="only this view (repeatable)")
    reindex.add_argument("--periodic", type=float, metavar="SECONDS", help="run again every SECONDS, until stopped")
    reindex.set_defaults(func=cmd_reindex)

    token = sub.add_parser("token", help="print a local development token")
    token.add_argument("--tenant", required=True)
    token.add_argument(
        "--scope", nargs="+", default=["memory:read", "memory:write"], help="memory:read memory:write memory:admin"
    )
    token.add_argument("--subject", default="dev")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="seconds until it expires")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> None:
    # aiokafka logs every refused connection while a broker starts; the probes report what matters.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
