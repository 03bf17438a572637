"""JWT attacks through HTTP, against the real gateway: every one is a 401 with a JSON error.

The verifier's own unit tests are in tests/ams/test_auth.py; these send the same forgeries to live
gateways (HS256 as configured by default, RS256 with a public key, ES256 from a JWKS URL).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ams.settings import Settings
from tests.ams.test_auth import RSA_KEY, RSA_PUBLIC_PEM, claims, jwks_url, signed_with_public_key, unsigned
from tests.support import extra_gateway

pytestmark = pytest.mark.stack
__all__ = ["jwks_url"]  # the fixture, shared with the unit tests


def assert_unauthorized(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, (reason, response.text)
    assert response.headers["content-type"].startswith("application/json"), reason
    error = response.json()["error"]
    assert error["code"] == "unauthorized" and error["message"], reason
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def attacks(settings: Settings, tenant: str) -> dict[str, str]:
    def hs256(**changes: object) -> str:
        base: dict[str, object] = {"tenant": tenant, "aud": settings.jwt_audience, "iss": settings.jwt_issuer}
        return jwt.encode(claims(**{**base, **changes}), settings.jwt_secret, algorithm="HS256")

    header, _, signature = hs256().split(".")
    other = hs256(tenant="victim").split(".")[1]
    return {
        "alg none": unsigned(claims(tenant=tenant, aud=settings.jwt_audience, iss=settings.jwt_issuer)),
        "signed with another secret": jwt.encode(claims(tenant=tenant), "x" * 32, algorithm="HS256"),
        "expired": hs256(exp=int(time.time()) - 10),
        "not yet valid": hs256(nbf=int(time.time()) + 600),
        "wrong audience": hs256(aud="someone-else"),
        "wrong issuer": hs256(iss="someone-else"),
        "no tenant claim": hs256(tenant=None),
        "tenant outside the grammar": hs256(tenant="Not A Tenant"),
        "no expiry": hs256(exp=None),
        "tampered payload": f"{header}.{other}.{signature}",
        "not a JWT": "not.a.jwt",
    }


READS: list[tuple[str, str]] = [("GET", "/v1/kv/k"), ("GET", "/v1/kv"), ("GET", "/v1/positions"),
                                ("GET", "/v1/events"), ("POST", "/v1/vector/search"), ("GET", "/v1/sandboxes")]


async def test_forged_and_invalid_tokens_get_401(api: httpx.AsyncClient, settings: Settings, tenant: str) -> None:
    for reason, token in attacks(settings, tenant).items():
        for method, path in READS:
            response = await api.request(method, path, headers={"Authorization": f"Bearer {token}"},
                                         json={"embedding": [1.0]} if method == "POST" else None)
            assert_unauthorized(response, f"{reason}: {method} {path}")
    for header in ("", "Bearer", "Basic dXNlcjpwdw==", "Token abc", "Bearer a.b"):
        assert_unauthorized(await api.get("/v1/kv/k", headers={"Authorization": header}), repr(header))


async def test_rs256_gateway_refuses_hs256_signed_with_its_public_key(settings: Settings, tenant: str) -> None:
    env = {"AMS_JWT_ALGORITHMS": "RS256", "AMS_JWT_PUBLIC_KEY": RSA_PUBLIC_PEM}
    async with extra_gateway(settings, tenant, env) as client:
        good = claims(tenant=tenant, aud=settings.jwt_audience, iss=settings.jwt_issuer)
        valid = jwt.encode(good, RSA_KEY, algorithm="RS256")
        assert (await client.get("/v1/kv/k", headers={"Authorization": f"Bearer {valid}"})).status_code == 404
        forged = signed_with_public_key(good)
        assert_unauthorized(await client.get("/v1/kv/k", headers={"Authorization": f"Bearer {forged}"}),
                            "HS256 with the RS256 public key")
        dev = jwt.encode(good, settings.jwt_secret, algorithm="HS256")
        assert_unauthorized(await client.get("/v1/kv/k", headers={"Authorization": f"Bearer {dev}"}),
                            "HS256 where only RS256 is configured")


async def test_jwks_gateway_refuses_an_unknown_kid(settings: Settings, tenant: str,
                                                   jwks_url: tuple[str, ec.EllipticCurvePrivateKey]) -> None:
    url, key = jwks_url
    async with extra_gateway(settings, tenant, {"AMS_JWT_ALGORITHMS": "ES256", "AMS_JWKS_URL": url}) as client:
        good = claims(tenant=tenant, aud=settings.jwt_audience, iss=settings.jwt_issuer)

        def es256(kid: str) -> Callable[[], str]:
            return lambda: jwt.encode(good, key, algorithm="ES256", headers={"kid": kid})

        assert (await client.get("/v1/kv/k", headers={"Authorization": f"Bearer {es256('key-1')()}"})
                ).status_code == 404
        assert_unauthorized(await client.get("/v1/kv/k", headers={"Authorization": f"Bearer {es256('key-2')()}"}),
                            "unknown kid")
        other_key = jwt.encode(good, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                               headers={"kid": "key-1"})
        assert_unauthorized(await client.get("/v1/kv/k", headers={"Authorization": f"Bearer {other_key}"}),
                            "known kid, another key")
