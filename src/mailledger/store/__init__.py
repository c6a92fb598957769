"""Persistence: SQLAlchemy models and sessions, and the blob store for raw bytes."""
