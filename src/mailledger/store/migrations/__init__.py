"""Alembic migration scripts for the mailledger schema (run by ``mailledger db upgrade``)."""
