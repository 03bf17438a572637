"""OAuth2 bearer JWTs: who is calling, for which tenant, with which scopes.

The tenant comes only from a claim of a verified token, never from the path, body or query. Accepted
algorithms are fixed by configuration and never taken from the token's header.

Being the operator (rebuilds, which affect every tenant) is a scope of its own, ``memory:operator``, that
the operator's identity provider grants; no tenant name makes a caller the operator, and ``memory:admin``
(a tenant's own sandboxes) does not imply it. Names AMS gives a meaning to (``all``: the owner of a sandbox
of every tenant) are refused as tenants, when a token is issued and when one is verified.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

import jwt

from ams.namespaces import ALL_TENANTS
from ams.settings import Settings
from commands.keys import InvalidName, check_tenant

READ = "memory:read"
WRITE = "memory:write"
ADMIN = "memory:admin"
OPERATOR = "memory:operator"
SCOPES = (READ, WRITE, ADMIN, OPERATOR)
RESERVED_TENANTS = frozenset({ALL_TENANTS})


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
        """``memory:admin`` stands for every tenant scope; ``memory:operator`` only for itself."""
        if scope not in self.scopes and (scope == OPERATOR or ADMIN not in self.scopes):
            raise Forbidden(f"this request needs the scope {scope!r}; the token has {sorted(self.scopes) or 'none'}")


def check_token_tenant(tenant: str) -> str:
    """A tenant a token may name: the tenant grammar, and none of the names AMS gives a meaning to."""
    check_tenant(tenant)
    if tenant in RESERVED_TENANTS:
        raise InvalidName(f"tenant {tenant!r} is reserved (reserved: {', '.join(sorted(RESERVED_TENANTS))})")
    return tenant


def token_scopes(raw: object) -> frozenset[str]:
    """The ``scope`` (or ``scp``) claim: a space-separated string or a list of strings (RFC 8693, 9068)."""
    if raw is None:
        return frozenset()
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list) and all(isinstance(scope, str) for scope in raw):
        return frozenset(raw)
    raise Unauthorized("invalid token: the 'scope' claim must be a space-separated string or a list of strings, "
                       f"got {type(raw).__name__}")


# A verified token is remembered until it expires, for at most this long (so a rotated JWKS key or a
# changed configuration takes effect within a minute), and at most this many tokens at once.
CACHE_SECONDS = 60.0
CACHE_SIZE = 10_000


class TokenVerifier:
    """Verifies bearer tokens; a token seen before is answered from a small cache until it expires."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._verified: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

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
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None and now < cached[0]:
            return cached[1]
        principal, expires = self._decode(token)
        self._verified[token] = (min(expires, now + CACHE_SECONDS), principal)
        if len(self._verified) > CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
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
            check_token_tenant(tenant)
        except InvalidName as error:
            raise Unauthorized(f"invalid token: {error}") from None
        scopes = token_scopes(claims.get("scope", claims.get("scp")))
        return Principal(tenant, str(claims["sub"]), scopes), float(claims["exp"])


def issue_dev_token(
    settings: Settings, tenant: str, scopes: list[str], *, subject: str = "dev", ttl: int = 86400
) -> str:
    """A token signed with the local development secret (HS256)."""
    check_token_tenant(tenant)
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise SystemExit(f"unknown scopes {sorted(unknown)}; choose from {', '.join(SCOPES)}")
    now = int(time.time())
    claims = {"sub": subject, settings.tenant_claim: tenant, "scope": " ".join(scopes), "iat": now,
              "nbf": now, "exp": now + ttl, "aud": settings.jwt_audience, "iss": settings.jwt_issuer}
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
