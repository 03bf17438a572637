"""How the real components start: the local launcher (no Docker) and docker-compose.yml for Docker users."""
