"""The `ams` command: run the local stack, its processes, and the operator's tools."""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console
from rich.table import Table

from ams.settings import get_settings

console = Console()
notices = Console(stderr=True)  # for commands whose standard output is data


def cmd_up(args: argparse.Namespace) -> None:
    from compose.local import LocalStack

    settings = get_settings()
    console.print(f"Starting the AMS stack (data under {settings.home})")
    LocalStack(settings).up(with_services=not args.no_services)
    if not args.no_services:
        console.print(f"\nGateway: [bold]{settings.gateway_url}/v1[/bold]   (dev token: `ams token --tenant demo`)")


def cmd_setup(args: argparse.Namespace) -> None:
    from compose import kafka
    from compose.system import FOR_BENCH, FOR_TESTS, REQUIRED, ensure_packages

    ensure_packages({**REQUIRED, **(FOR_TESTS if args.for_tests else {}), **(FOR_BENCH if args.for_bench else {})})
    kafka.fetch_jars(get_settings())


def cmd_demo(args: argparse.Namespace) -> None:
    from ams.demo import main as demo

    demo(get_settings())


def cmd_down(args: argparse.Namespace) -> None:
    from compose.local import LocalStack

    try:
        stopped = LocalStack(get_settings()).down(args.components or None)
    except KeyError as error:
        raise SystemExit(error.args[0]) from None
    console.print(f"Stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


def cmd_status(args: argparse.Namespace) -> None:
    from compose.local import LocalStack

    stack = LocalStack(get_settings())
    table = Table("component", "state", "pid", "address", "security")
    for name, state, pid, address in stack.status():
        colour = {"ready": "green", "stopped": "dim"}.get(state, "red")
        table.add_row(name, f"[{colour}]{state}[/{colour}]", pid, address, stack.posture(name))
    console.print(table)


def cmd_gateway(args: argparse.Namespace) -> None:
    from compose import gateways
    from queries.gateway import create_app
    from queries.server import serve

    settings = get_settings()
    control_socket = None
    if args.process is not None:
        settings = gateways.process_settings(settings, args.process)
        control_socket = gateways.control_socket(settings, args.process)
    serve(create_app(settings), settings, args.host or settings.gateway_host, args.port or settings.gateway_port,
          control_socket)


def cmd_project(args: argparse.Namespace) -> None:
    from projections.worker import run_projection

    run_projection(args.projection, get_settings())


def cmd_reindex(args: argparse.Namespace) -> None:
    from projections.reindex import VIEWS, run_reindex

    run_reindex(get_settings(), args.view or VIEWS, args.periodic)


def cmd_mcp(args: argparse.Namespace) -> None:
    import os

    from memory_client.mcp_server import run

    token = args.token or os.environ.get("AMS_TOKEN")
    if not token:
        notices.print("ams mcp needs a token: --token, or AMS_TOKEN (`ams token --tenant T` prints a local one)")
        sys.exit(2)
    run(args.url or os.environ.get("AMS_URL") or f"{get_settings().gateway_url}/v1", token,
        "stdio" if args.transport == "stdio" else "http", args.host, args.port)


def cmd_token(args: argparse.Namespace) -> None:
    from ams.auth import issue_dev_token
    from commands.keys import InvalidName

    try:
        print(issue_dev_token(get_settings(), args.tenant, args.scope, subject=args.subject, ttl=args.ttl))
    except InvalidName as error:
        raise SystemExit(str(error)) from None


def cmd_log_export(args: argparse.Namespace) -> None:
    import asyncio

    from replay.cut import parse_cut
    from replay.log_io import Selection, export_log

    selection = Selection(args.tenant, args.key_prefix, parse_cut(args.until))
    with open(args.output, "wb") if args.output != "-" else sys.stdout.buffer as out:
        try:
            count = asyncio.run(export_log(get_settings(), out, selection, args.topic))
        except ValueError as error:
            raise SystemExit(str(error)) from None
    notices.print(f"exported {count} records to {args.output}")


def cmd_log_import(args: argparse.Namespace) -> None:
    import asyncio

    from replay.log_io import import_log

    with open(args.input, "rb") if args.input != "-" else sys.stdin.buffer as lines:
        count = asyncio.run(import_log(get_settings(), lines, args.topic))
    console.print(f"imported {count} records into {args.topic}")


def cmd_rebuild(args: argparse.Namespace) -> None:
    import asyncio

    from replay.rebuild_lock import RebuildRunning
    from replay.rebuilds import rebuild

    try:
        states = asyncio.run(rebuild(get_settings(), args.projection, restart=args.restart, workers=args.workers,
                                     lock_token=args.lock_token))
    except RebuildRunning as error:
        raise SystemExit(str(error)) from None
    for state in states:
        console.print(f"{state.projection}: generation {state.generation} is live ({state.applied} events replayed, "
                      f"{state.events_per_second:,.0f} events/s)")


def cmd_sandbox(args: argparse.Namespace) -> None:
    import asyncio

    from rich.table import Table

    from ams.namespaces import ALL_TENANTS
    from replay import diff, sandboxes

    settings = get_settings()
    owner = args.tenant or ALL_TENANTS
    try:
        if args.sandbox_command == "create":
            spec = asyncio.run(sandboxes.create_sandbox(settings, owner, args.name, key_prefix=args.key_prefix,
                                                        until=args.until))
            console.print(f"sandbox {owner}/{spec.name}: {spec.events} events copied; serve it with the header "
                          f"X-AMS-Sandbox: {spec.name}")
        elif args.sandbox_command == "list":
            table = Table("owner", "name", "key prefix", "until", "events")
            for spec in asyncio.run(sandboxes.list_sandboxes(settings)).values():
                table.add_row(spec.owner, spec.name, spec.key_prefix or "", spec.until or "", str(spec.events))
            console.print(table)
        elif args.sandbox_command == "diff":
            found = asyncio.run(sandboxes.list_sandboxes(settings)).get(f"{owner}|{args.name}".encode())
            if found is None:
                raise sandboxes.SandboxError(f"no sandbox {owner}/{args.name}")
            rows = asyncio.run(diff.diff_sandbox(settings, found, args.key_tenant or args.tenant or "", args.against))
            table = Table("key", "sandbox", args.against)
            for row in rows:
                table.add_row(row.key, repr(row.sandbox), repr(row.other))
            console.print(table if rows else "no differences")
        else:
            asyncio.run(sandboxes.drop_sandbox(settings, owner, args.name))
            console.print(f"sandbox {owner}/{args.name} dropped")
    except (sandboxes.SandboxError, ValueError) as error:
        raise SystemExit(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ams", description="AMS, the Autonomous Memory System")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Kafka, Redis, PostgreSQL, the projectors and the gateway")
    up.add_argument("--no-services", action="store_true", help="start only Kafka, Redis and PostgreSQL")
    up.set_defaults(func=cmd_up)

    setup = sub.add_parser("setup", help="install missing system packages and fetch the Kafka jars")
    setup.add_argument("--for-tests", action="store_true", help="also what the test suite needs")
    setup.add_argument("--for-bench", action="store_true", help="also what the benchmarks need")
    setup.set_defaults(func=cmd_setup)

    sub.add_parser("demo", help="show an agent's writes and reads against the running stack").set_defaults(
        func=cmd_demo)

    down = sub.add_parser("down", help="stop what `ams up` started")
    down.add_argument("components", nargs="*", help="only these (default: all); `gateway` names every gateway process")
    down.set_defaults(func=cmd_down)

    sub.add_parser("status", help="show each component and its state").set_defaults(func=cmd_status)

    gateway = sub.add_parser("gateway", help="run one HTTP gateway process in the foreground")
    gateway.add_argument("--host")
    gateway.add_argument("--port", type=int)
    gateway.add_argument("--process", type=int, metavar="N",
                         help="run as gateway process N of `ams up` (its own instance name and probe socket)")
    gateway.set_defaults(func=cmd_gateway)

    project = sub.add_parser("project", help="run a projection worker in the foreground")
    project.add_argument("projection", choices=["redis", "postgres", "embedder", "milvus"])
    project.set_defaults(func=cmd_project)

    rebuild = sub.add_parser("rebuild", help="rebuild a projection from offset 0 beside the live one, then swap")
    rebuild.add_argument("projection", choices=["redis", "postgres", "vectors", "all"])
    rebuild.add_argument("--restart", action="store_true", help="discard an unfinished rebuild and start over")
    rebuild.add_argument("--workers", type=int, default=None,
                         help="worker processes sharing the partitions (default: one per CPU)")
    # The admin endpoint's: the locks it took for the process it starts (`replay.rebuild_lock`).
    rebuild.add_argument("--lock-token", default=None, help=argparse.SUPPRESS)
    rebuild.set_defaults(func=cmd_rebuild)

    sandbox = sub.add_parser("sandbox", help="fork the log into a sandbox; list, diff and drop sandboxes")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    for command, text in [("create", "copy a slice of the log into a new sandbox"), ("list", "list sandboxes"),
                          ("diff", "keys that differ between a sandbox and live"), ("drop", "remove every trace")]:
        parser_ = sandbox_sub.add_parser(command, help=text)
        if command != "list":
            parser_.add_argument("name")
        parser_.add_argument("--tenant", help="the tenant whose events (and sandbox) it is; default: every tenant")
        if command == "create":
            parser_.add_argument("--key-prefix")
            parser_.add_argument("--until", help="a position like 0:15,3:42 or an RFC 3339 time")
        if command == "diff":
            parser_.add_argument("--against", choices=["live", "source"], default="live",
                                 help="live memory now, or the live state at the sandbox's cut")
            parser_.add_argument("--key-tenant", help="whose keys to compare in a sandbox of every tenant")
        parser_.set_defaults(func=cmd_sandbox)

    log_parser = sub.add_parser("log", help="export or import a slice of the log as JSON lines")
    log_sub = log_parser.add_subparsers(dest="log_command", required=True)
    export = log_sub.add_parser("export", help="write events (with positions) as JSON lines")
    export.add_argument("-o", "--output", default="-", help="file (default: standard output)")
    export.add_argument("--tenant")
    export.add_argument("--key-prefix")
    export.add_argument("--until", help="a position like 0:15,3:42 or an RFC 3339 time")
    export.add_argument("--topic", help="default: the event log")
    export.set_defaults(func=cmd_log_export)
    import_ = log_sub.add_parser("import", help="append exported JSON lines to a topic, in one transaction")
    import_.add_argument("input", help="file (- for standard input)")
    import_.add_argument("--topic", required=True, help="where to append (it must exist)")
    import_.set_defaults(func=cmd_log_import)

    reindex = sub.add_parser("reindex", help="reconcile the vector views with the source of truth and repair them")
    reindex.add_argument("--view", action="append", choices=["faiss", "milvus"], help="only this view (repeatable)")
    reindex.add_argument("--periodic", type=float, metavar="SECONDS", help="run again every SECONDS, until stopped")
    reindex.set_defaults(func=cmd_reindex)

    mcp = sub.add_parser("mcp", help="serve one tenant's memory as a Model Context Protocol server")
    mcp.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                     help="stdio (default), or streamable HTTP at http://HOST:PORT/mcp")
    mcp.add_argument("--url", help="the gateway's API root (default: AMS_URL, else this stack's gateway)")
    mcp.add_argument("--token", help="the tenant's bearer token (default: AMS_TOKEN)")
    mcp.add_argument("--host", default="127.0.0.1", help="with --transport http: the address to bind (loopback)")
    mcp.add_argument("--port", type=int, default=8788, help="with --transport http: the port")
    mcp.set_defaults(func=cmd_mcp)

    token = sub.add_parser("token", help="print a local development token")
    token.add_argument("--tenant", required=True)
    token.add_argument(
        "--scope", nargs="+", default=["memory:read", "memory:write"],
        help="memory:read memory:write memory:admin (the tenant's sandboxes), memory:operator (rebuilds)"
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
