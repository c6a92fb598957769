"""Sender authentication (SPF, DKIM, ARC, DMARC) and the trust rules of DESIGN §4."""
