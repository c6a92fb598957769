"""Benchmarks: the capture path against a bare aiosmtpd listener, side by side in one run."""
