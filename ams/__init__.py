"""AMS, the Autonomous Memory System: shared settings, auth, observability and the `ams` CLI."""
