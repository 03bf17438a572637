"""Admin routes: sandboxes (a tenant's own, `memory:admin`) and rebuilds (operators only)."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict

import redis.asyncio as aioredis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams import credentials
from ams.auth import ADMIN, Principal
from ams.http import ApiError, authorize, json_response, read_json
from ams.namespaces import ALL_TENANTS
from ams.settings import Settings
from commands.keys import check_prefix
from projections.redis_layout import RedisLayout
from queries.namespaces import NotServed
from replay import cut
from replay.diff import AGAINST, diff_sandbox
from replay.rebuild import RebuildState, read_state, save_state
from replay.rebuilds import ALL, REBUILDABLE
from replay.sandboxes import SandboxError, check_name, create_sandbox, drop_sandbox, list_sandboxes


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.namespaces.settings
    return settings


async def _own_sandbox(request: Request, principal: Principal, name: str):  # type: ignore[no-untyped-def]
    check_name(name)
    found = await list_sandboxes(_settings(request))
    spec = found.get(f"{principal.tenant}|{name}".encode()) or found.get(f"{ALL_TENANTS}|{name}".encode())
    if spec is None:
        raise ApiError(404, "no_sandbox", f"no sandbox named {name!r}; list yours with GET /v1/sandboxes")
    return spec


async def create(request: Request) -> Response:
    principal = authorize(request, ADMIN)
    body = await read_json(request, 64 << 10)
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise ApiError(422, "invalid_sandbox", 'send {"name": ..., "key_prefix"?: ..., "until"?: "<position or time>"}')
    unknown = set(body) - {"name", "key_prefix", "until"}
    if unknown:
        raise ApiError(422, "invalid_sandbox", f"unknown fields {sorted(unknown)}")
    name, prefix, until = check_name(body["name"]), body.get("key_prefix"), body.get("until")
    if prefix is not None:
        check_prefix(str(prefix))
    if until is not None:
        cut.parse_cut(str(until))
    try:
        spec = await create_sandbox(_settings(request), principal.tenant, name, key_prefix=prefix, until=until)
    except SandboxError as error:
        raise ApiError(409, "sandbox_exists", str(error)) from None
    except cut.PositionNotInLog as error:
        raise ApiError(422, "invalid_until", str(error)) from None
    try:
        await request.app.state.namespaces.include(spec)
    except NotServed as error:
        raise ApiError(503, "sandbox_not_served",
                       f"sandbox {name!r} is created, but this gateway could not start serving it ({error}); "
                       "requests naming it answer 404 until it does: retry them shortly, or drop the sandbox "
                       "and create it again", {"Retry-After": "1"}) from None
    return json_response(asdict(spec), 201, {"X-AMS-Position": spec.position} if spec.position else None)


async def listing(request: Request) -> Response:
    principal = authorize(request, ADMIN)
    found = await list_sandboxes(_settings(request))
    mine = [asdict(spec) for spec in found.values() if spec.owner in (principal.tenant, ALL_TENANTS)]
    return json_response({"items": sorted(mine, key=lambda spec: spec["name"])})


async def drop(request: Request) -> Response:
    principal = authorize(request, ADMIN)
    name = check_name(request.path_params["name"])
    spec = await _own_sandbox(request, principal, name)
    if spec.owner != principal.tenant:
        raise ApiError(403, "forbidden", f"sandbox {name!r} holds every tenant's events; an operator drops it")
    await drop_sandbox(_settings(request), principal.tenant, name)
    return json_response({"dropped": name})


async def diff(request: Request) -> Response:
    principal = authorize(request, ADMIN)
    spec = await _own_sandbox(request, principal, request.path_params["name"])
    against = request.query_params.get("against", "live")
    if against not in AGAINST:
        raise ApiError(400, "invalid_against", f"against must be one of {', '.join(AGAINST)}")
    rows = await diff_sandbox(_settings(request), spec, principal.tenant, against)
    return json_response({"against": against, "differences": [asdict(row) for row in rows]})


def _operator(request: Request) -> Principal:
    principal = authorize(request, ADMIN)
    if principal.tenant != _settings(request).operator_tenant:
        raise ApiError(403, "forbidden", "rebuilds affect every tenant: only the operator tenant may run them")
    return principal


def _projection(request: Request) -> str:
    projection = request.path_params["projection"]
    if projection not in (*REBUILDABLE, ALL):
        raise ApiError(404, "no_projection",
                       f"no projection {projection!r}; rebuildable: {', '.join((*REBUILDABLE, ALL))}")
    return str(projection)


async def start_rebuild(request: Request) -> Response:
    _operator(request)
    projection = _projection(request)
    from compose.local import LocalStack

    stack = LocalStack(_settings(request))
    process = stack.process(f"rebuild-{projection}")
    # `all` runs every rebuild: it conflicts with each of them, and each of them with it.
    for name in (REBUILDABLE if projection == ALL else (projection, ALL)):
        running = stack.process(f"rebuild-{name}").pid()
        if running is not None:
            raise ApiError(409, "rebuild_running", f"a {name} rebuild is already running (pid {running})")
    client: aioredis.Redis = request.app.state.namespaces.redis
    layout = RedisLayout(_settings(request).redis_prefix)
    for name in (REBUILDABLE if projection == ALL else (projection,)):
        await save_state(client, layout, RebuildState(name, generation=-1, state="starting"))
    # A rebuild replaces projections' state wholesale: it runs as the operator's principal, not the gateway's.
    process.start([sys.executable, "-m", "ams.cli", "rebuild", projection],
                  env={**os.environ, "AMS_PRINCIPAL": credentials.ADMIN})
    return json_response({"projection": projection, "status": f"/v1/admin/rebuilds/{projection}"}, 202)


async def rebuild_status(request: Request) -> Response:
    _operator(request)
    projection = _projection(request)
    client: aioredis.Redis = request.app.state.namespaces.redis
    layout = RedisLayout(_settings(request).redis_prefix)
    if projection == ALL:  # each projection's state, and the sequence's: the first that is not done
        states = {name: await read_state(client, layout, name) for name in REBUILDABLE}
        if any(state is None for state in states.values()):
            raise ApiError(404, "no_rebuild", "not every projection has been rebuilt yet; start with POST")
        current = next((state for state in states.values() if state and state["state"] != "done"), None)
        return json_response({"state": current["state"] if current else "done", "projections": states})
    state = await read_state(client, layout, projection)
    if state is None:
        raise ApiError(404, "no_rebuild", f"no {projection} rebuild has run")
    return json_response(state)


routes = [
    Route("/v1/sandboxes", create, methods=["POST"]),
    Route("/v1/sandboxes", listing, methods=["GET"]),
    Route("/v1/sandboxes/{name}", drop, methods=["DELETE"]),
    Route("/v1/sandboxes/{name}/diff", diff, methods=["GET"]),
    Route("/v1/admin/rebuilds/{projection}", start_rebuild, methods=["POST"]),
    Route("/v1/admin/rebuilds/{projection}", rebuild_status, methods=["GET"]),
]


