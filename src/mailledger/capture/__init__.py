"""The capture listener, its durable intake, and the worker that processes stored mail."""
