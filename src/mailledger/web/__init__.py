"""The HTTP surface (DESIGN §11): the API (v1), webhooks outbox and delivery, the web pages."""
