"""Recipient routes, address parsing and normalization, and party matching."""
