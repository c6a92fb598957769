"""Test helpers for the status endpoint: GET a path, parse a Prometheus exposition."""

from __future__ import annotations

import http.client
import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http_get(port: int, path: str, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET ``path`` from 127.0.0.1:``port``; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``: (name, sorted labels) → value."""
    status, body = http_get(port, "/metrics")
    if status != 200:
        raise AssertionError(f"/metrics answered {status}: {body[:200]!r}")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value, 0 when absent (a labelled counter appears on first use)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def health(port: int) -> tuple[int, dict[str, Any]]:
    """``/health``: (status, parsed JSON body)."""
    status, body = http_get(port, "/health")
    data: dict[str, Any] = json.loads(body)
    return status, data
