"""OAuth2 bearer JWTs: who is calling, for which tenant, with which scopes.

The tenant comes only from a claim of a verified token, never from the path, body or query. Accepted
algorithms are fixed by configuration and never taken from the token's header.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property

import jwt

from ams.settings import Settings
from commands.keys import InvalidName, check_tenant

READ = "memory:read"
WRITE = "memory:write"
ADMIN = "memory:admin"
SCOPES = (READ, WRITE, ADMIN)


class Unauthorized(Exception):
    """No token, or one that does not verify: 401."""


class Forbidden(Exception):
    """A valid token without the scope the request needs: 403."""


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    subject: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes and ADMIN not in self.scopes:
            raise Forbidden(f"this request needs the scope {scope!r}; the token has {sorted(self.scopes) or 'none'}")


# Verified tokens are remembered until they expire (a signature check costs more than a vector search):
# a token that verified once verifies the same way until its `exp`.
VERIFIED_CACHE_SIZE = 4096


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._verified: dict[str, tuple[Principal, float]] = {}

    @cached_property
    def _jwks(self) -> jwt.PyJWKClient | None:
        return jwt.PyJWKClient(self.settings.jwks_url) if self.settings.jwks_url else None

    def _key(self, token: str) -> object:
        if self._jwks is not None:
            try:
                return self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientError as error:
                raise Unauthorized(f"token signing key not found: {error}") from None
        if any(algorithm.startswith(("RS", "ES", "PS", "Ed")) for algorithm in self.settings.jwt_algorithms):
            return self.settings.jwt_public_key
        return self.settings.jwt_secret

    def verify(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        token = token.strip()
        cached = self._verified.get(token)
        if cached is not None and time.time() < cached[1]:
            return cached[0]
        principal, expires = self._decode(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = (principal, expires)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        """The token's principal and expiry; raises Unauthorized."""
        try:
            claims = jwt.decode(
                token,
                self._key(token),  # type: ignore[arg-type]
                algorithms=list(self.settings.jwt_algorithms),
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise Unauthorized(f"invalid token: {error}") from None
        tenant = claims.get(self.settings.tenant_claim)
        if not isinstance(tenant, str):
            raise Unauthorized(f"invalid token: no {self.settings.tenant_claim!r} claim naming the tenant")
        try:
            check_tenant(tenant)
        except InvalidName as error:
            raise Unauthorized(f"invalid token: {error}") from None
        raw_scopes = claims.get("scope", claims.get("scp", ""))
        scopes = raw_scopes.split() if isinstance(raw_scopes, str) else list(raw_scopes or [])
        return Principal(tenant, str(claims["sub"]), frozenset(str(scope) for scope in scopes)), float(claims["exp"])


def issue_dev_token(
    settings: Settings, tenant: str, scopes: list[str], *, subject: str = "dev", ttl: int = 86400
) -> str:
    """A token signed with the local development secret (HS256)."""
    check_tenant(tenant)
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise SystemExit(f"unknown scopes {sorted(unknown)}; choose from {', '.join(SCOPES)}")
    now = int(time.time())
    claims = {"sub": subject, settings.tenant_claim: tenant, "scope": " ".join(scopes), "iat": now,
              "nbf": now, "exp": now + ttl, "aud": settings.jwt_audience, "iss": settings.jwt_issuer}
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
