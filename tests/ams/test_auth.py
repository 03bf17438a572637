"""Token verification: the tenant comes from a verified claim only; algorithms come from configuration."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ams.auth import Forbidden, Principal, TokenVerifier, Unauthorized, issue_dev_token
from ams.settings import Settings

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def claims(**changes: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"sub": "agent-1", "tenant": "acme", "scope": "memory:read memory:write",
                               "aud": "ams", "iss": "ams-local", "iat": now, "nbf": now, "exp": now + 60}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def hs256(**changes: object) -> str:
    return jwt.encode(claims(**changes), SECRET, algorithm="HS256")


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(Settings(jwt_secret=SECRET))


def test_a_valid_token_names_tenant_subject_and_scopes(verifier: TokenVerifier) -> None:
    principal = verifier.verify(f"Bearer {hs256()}")
    assert principal == Principal("acme", "agent-1", frozenset({"memory:read", "memory:write"}))


def test_the_dev_token_verifies_with_the_dev_settings() -> None:
    settings = Settings(jwt_secret=SECRET)
    token = issue_dev_token(settings, "demo", ["memory:admin"])
    assert TokenVerifier(settings).verify(f"Bearer {token}").tenant == "demo"


def unsigned(payload: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


def tampered() -> str:
    header, payload, signature = hs256().split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["tenant"] = "victim"
    encoded = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


@pytest.mark.parametrize(("token", "reason"), [
    (lambda: unsigned(claims()), "alg none"),
    (lambda: jwt.encode(claims(), RSA_PUBLIC_PEM.encode()[:64], algorithm="HS256"), "HS256 with another key"),
    (lambda: hs256(exp=int(time.time()) - 10), "expired"),
    (lambda: hs256(nbf=int(time.time()) + 600), "not yet valid"),
    (lambda: hs256(aud="someone-else"), "wrong audience"),
    (lambda: hs256(iss="someone-else"), "wrong issuer"),
    (lambda: hs256(tenant=None), "no tenant claim"),
    (lambda: hs256(tenant="Not A Tenant"), "malformed tenant"),
    (lambda: hs256(exp=None), "no expiry"),
    (tampered, "tampered payload"),
    (lambda: jwt.encode(claims(), RSA_KEY, algorithm="RS256"), "RS256 where HS256 is configured"),
])
def test_bad_tokens_are_unauthorized(verifier: TokenVerifier, token, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Unauthorized):
        verifier.verify(f"Bearer {token()}")


def test_missing_scope_is_forbidden_and_admin_implies_every_scope(verifier: TokenVerifier) -> None:
    reader = verifier.verify(f"Bearer {hs256(scope='memory:read')}")
    with pytest.raises(Forbidden, match="memory:write"):
        reader.require("memory:write")
    verifier.verify(f"Bearer {hs256(scope='memory:admin')}").require("memory:write")


def test_rs256_with_a_configured_public_key() -> None:
    verifier = TokenVerifier(Settings(jwt_algorithms=("RS256",), jwt_public_key=RSA_PUBLIC_PEM))
    assert verifier.verify(f"Bearer {jwt.encode(claims(), RSA_KEY, algorithm='RS256')}").tenant == "acme"
    # HS256 signed with the RSA public key as its secret: the classic confusion attack.
    with pytest.raises(Unauthorized):
        verifier.verify(f"Bearer {signed_with_public_key(claims())}")


def signed_with_public_key(payload: dict[str, object]) -> str:
    """Forged by hand: PyJWT itself refuses to use a PEM public key as an HMAC secret."""
    def part(data: dict[str, object]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")
    signing_input = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(payload)
    signature = hmac.new(RSA_PUBLIC_PEM.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


@pytest.fixture
def jwks_url() -> Iterator[tuple[str, ec.EllipticCurvePrivateKey]]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "key-1", "use": "sig", "alg": "ES256"}]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json", key
    server.shutdown()


def test_es256_keys_from_a_jwks_url(jwks_url: tuple[str, ec.EllipticCurvePrivateKey]) -> None:
    url, key = jwks_url
    verifier = TokenVerifier(Settings(jwt_algorithms=("ES256",), jwks_url=url))
    token = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "key-1"})
    assert verifier.verify(f"Bearer {token}").tenant == "acme"
    unknown_kid = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "key-2"})
    with pytest.raises(Unauthorized, match="signing key"):
        verifier.verify(f"Bearer {unknown_kid}")


def test_a_cached_token_still_expires(verifier: TokenVerifier) -> None:
    token = hs256(exp=int(time.time()) + 1)
    assert verifier.verify(f"Bearer {token}").tenant == "acme"
    assert verifier.verify(f"Bearer {token}").tenant == "acme"  # from the cache
    time.sleep(1.1)
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(f"Bearer {token}")
