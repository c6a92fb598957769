"""Forwarding set-up: Gmail confirmations, hand-back, and the round-trip forwarding check."""
