"""Helpers for tests: real servers on loopback, message builders, a PostgreSQL instance."""
