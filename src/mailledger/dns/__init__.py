"""The shared DNS resolver and the records tenants publish (later issue)."""
