"""Consistency classes: which writes answer once applied (strong) and which once logged (eventual).

The default is *strong*. A tenant's policy may make key prefixes eventual (long-term facts, say), set
with ``AMS_CONSISTENCY_POLICY`` as JSON: ``{"*": {"fact:": "eventual"}, "acme": {"fact:important:": "strong"}}``
(``"*"`` applies to every tenant; the longest matching prefix wins, a tenant's own entries before ``"*"``).
A request's ``Prefer: respond-async`` always makes it eventual.
"""

from __future__ import annotations

from collections.abc import Mapping

STRONG = "strong"
EVENTUAL = "eventual"
CLASSES = (STRONG, EVENTUAL)


def parse_policy(raw: object) -> dict[str, dict[str, str]]:
    """Validate a policy (already parsed from JSON); raise ValueError saying what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("the consistency policy must be a JSON object of tenant -> {key prefix: class}")
    policy: dict[str, dict[str, str]] = {}
    for tenant, prefixes in raw.items():
        if not isinstance(prefixes, dict):
            raise ValueError(f"policy for tenant {tenant!r} must map key prefixes to {' or '.join(CLASSES)}")
        for prefix, kind in prefixes.items():
            if kind not in CLASSES:
                raise ValueError(f"policy for {tenant!r} prefix {prefix!r}: {kind!r} is not {' or '.join(CLASSES)}")
        policy[str(tenant)] = {str(prefix): str(kind) for prefix, kind in prefixes.items()}
    return policy


def default_class(policy: Mapping[str, Mapping[str, str]], tenant: str, key: str) -> str:
    for scope in (tenant, "*"):
        matches = [prefix for prefix in policy.get(scope, {}) if key.startswith(prefix)]
        if matches:
            return policy[scope][max(matches, key=len)]
    return STRONG
