"""What `compose.security` grants, read from its output (the attack suite tries it on the real processes)."""

from __future__ import annotations

from ams import credentials
from ams.settings import Settings
from compose.kafka_acls import Operation, Pattern, Resource
from compose.security import dsn_of, kafka_grants, redacted, redis_acl


def test_only_sandbox_topics_may_be_created_or_deleted_by_anyone_but_the_admin(settings: Settings) -> None:
    grants = kafka_grants(settings)
    assert all(grant.principal != credentials.ADMIN for grant in grants)  # a super user: it needs none
    topic_changes = [grant for grant in grants if grant.operation in (Operation.CREATE, Operation.DELETE)]
    assert topic_changes and {grant.principal for grant in topic_changes} == {credentials.GATEWAY}
    assert all(grant.resource == Resource.TOPIC and grant.pattern == Pattern.PREFIXED and ".sandbox." in grant.name
               for grant in topic_changes)


def test_only_the_gateway_appends_to_the_log(settings: Settings) -> None:
    writers = {grant.principal for grant in kafka_grants(settings)
               if grant.operation == Operation.WRITE and settings.events_topic.startswith(grant.name)}
    assert writers == {credentials.GATEWAY}


def test_redis_turns_the_default_user_off_and_gives_every_principal_a_password(settings: Settings) -> None:
    lines = redis_acl(settings).splitlines()
    assert lines[0].startswith("user default off")
    for principal in credentials.CLIENTS:
        secret = credentials.password(settings.secrets_dir, principal)
        assert any(line.startswith(f"user {principal} on >{secret} ") for line in lines), principal


def test_addresses_are_shown_without_their_password() -> None:
    assert redacted("redis://gateway:s3cr-t_@127.0.0.1:6379/0") == "redis://gateway@127.0.0.1:6379/0"
    assert redacted("postgresql://ams:pw@h:5432/ams?sslmode=require") == "postgresql://ams@h:5432/ams?sslmode=require"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_another_database_keeps_the_dsns_options() -> None:
    assert dsn_of("postgresql://a:b@h:1/ams?sslmode=require", "postgres") == "postgresql://a:b@h:1/postgres?sslmode=require"
    assert dsn_of("postgresql://a:b@h:1/ams", "postgres") == "postgresql://a:b@h:1/postgres"
