"""Projections: pure functions of the log, materialized in Redis, PostgreSQL and vector views."""
