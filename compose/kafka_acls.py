"""Kafka ACLs made through the admin protocol (CreateAcls), which aiokafka speaks but does not expose.

aiokafka ships CreateAcls only in versions 0 and 1, which Kafka 4 no longer accepts (KIP-896); version 2
(the first "flexible" one) has the same fields in compact encodings. Its version is pinned, and the attack
tests (tests/test_backend_attacks.py) prove the ACLs made here are enforced.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import CompactArray, CompactString, Int8, Int16, Int32, Schema, TaggedFields


class Resource(IntEnum):
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class Pattern(IntEnum):
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    DESCRIBE = 8
    DESCRIBE_CONFIGS = 10
    IDEMPOTENT_WRITE = 12


ALLOW = 3


@dataclass(frozen=True)
class Grant:
    """``principal`` (a SCRAM user name) may do ``operation`` on the resources ``pattern`` + ``name`` match."""

    principal: str
    operation: Operation
    resource: Resource
    name: str
    pattern: Pattern = Pattern.LITERAL


class CreateAclsResponse_v2(Response):
    API_KEY = 30
    API_VERSION = 2
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", CompactArray(("error_code", Int16), ("error_message", CompactString("utf-8")),
                                 ("tags", TaggedFields))),
        ("tags", TaggedFields),
    )


class CreateAclsRequest_v2(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 30
    API_VERSION = 2
    RESPONSE_TYPE = CreateAclsResponse_v2
    SCHEMA = Schema(
        ("creations", CompactArray(
            ("resource_type", Int8), ("resource_name", CompactString("utf-8")), ("resource_pattern_type", Int8),
            ("principal", CompactString("utf-8")), ("host", CompactString("utf-8")), ("operation", Int8),
            ("permission_type", Int8), ("tags", TaggedFields))),
        ("tags", TaggedFields),
    )


class CreateAcls(Request[CreateAclsRequest_v2]):
    API_KEY = 30

    def __init__(self, grants: list[Grant]) -> None:
        self.grants = grants

    def build(self, request_struct_class: type[CreateAclsRequest_v2]) -> CreateAclsRequest_v2:
        creations: list[tuple[object, ...]] = [
            (grant.resource, grant.name, grant.pattern, f"User:{grant.principal}", "*", grant.operation, ALLOW, {})
            for grant in self.grants]
        return request_struct_class(creations, {})


async def create(admin: AIOKafkaAdminClient, grants: list[Grant]) -> None:
    """Add the grants (adding one that exists changes nothing); raise if the broker refused any."""
    response = await admin._send_request(CreateAcls(grants))  # private: see the module docstring
    refused = [(grant, message) for grant, (code, message, _tags) in zip(grants, response.results, strict=True)
               if code != 0]
    if refused:
        raise RuntimeError(f"Kafka refused ACLs: {refused}")
