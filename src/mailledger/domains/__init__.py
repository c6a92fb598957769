"""What tenants publish in DNS: the records, the live check, DKIM keys, signing as their domain."""
