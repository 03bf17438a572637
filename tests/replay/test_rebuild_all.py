"""`ams rebuild all` through the admin endpoint: every projection rebuilt in turn, operators only."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ams.settings import Settings
from tests.conftest import token_for
from tests.replay.test_rebuild import history_of_writes
from tests.replay.test_rebuild_postgres import current_rows
from tests.replay.test_rebuild_vectors import EXPECTED, vector_history, wait_both
from tests.support import fold_log_for, redis_records

pytestmark = pytest.mark.stack


async def test_only_the_operator_scope_may_rebuild_any_projection(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    tenant_admin = {"Authorization": f"Bearer {token_for(settings, tenant, 'memory:admin')}"}
    # A tenant named "ops" (the operator's name before issue 19) is a tenant like any other.
    operator_writer = {"Authorization": f"Bearer {token_for(settings, 'ops', 'memory:admin', 'memory:write')}"}
    for projection in ("postgres", "vectors", "all"):
        assert (await api.post(f"/v1/admin/rebuilds/{projection}", headers=tenant_admin)).status_code == 403
        assert (await api.get(f"/v1/admin/rebuilds/{projection}", headers=tenant_admin)).status_code == 403
        refused = await api.post(f"/v1/admin/rebuilds/{projection}", headers=operator_writer)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden", refused.text
    assert (await api.post("/v1/admin/rebuilds/everything", headers=tenant_admin)).status_code == 403


async def test_rebuild_all_through_the_endpoint_leaves_every_projection_equal_to_the_log(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    await history_of_writes(api)
    token = await vector_history(api)
    await asyncio.sleep(1.1)  # "short" expires
    await wait_both(api, token, EXPECTED)
    operator = {"Authorization": f"Bearer {token_for(settings, 'ops', 'memory:operator')}"}
    assert (await api.post("/v1/admin/rebuilds/nothing", headers=operator)).status_code == 404
    started = await api.post("/v1/admin/rebuilds/all", headers=operator)
    assert started.status_code == 202, started.text
    assert (await api.post("/v1/admin/rebuilds/postgres", headers=operator)).status_code == 409
    async with asyncio.timeout(600):
        while True:
            assert (await api.get("/v1/kv/k1")).json() == {"i": 29, "extra": True}  # reads stay correct
            status = await api.get("/v1/admin/rebuilds/all", headers=operator)
            if status.status_code == 200 and status.json()["state"] in ("done", "failed"):
                break
            await asyncio.sleep(0.5)
    body = status.json()
    assert body["state"] == "done", body
    for projection in ("redis", "postgres", "vectors"):
        assert body["projections"][projection]["state"] == "done", body
        assert body["projections"][projection]["applied"] > 0

    expected = {key: record for key, record in (await fold_log_for(settings, tenant)).items() if record}
    assert await redis_records(settings, tenant) == expected
    assert await current_rows(settings, settings.postgres_schema, tenant) == expected
    await wait_both(api, token, EXPECTED)
