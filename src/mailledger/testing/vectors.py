"""The published test suites in ``shared/vectors`` beside the repository, as pytest cases.

They are read in place, never copied into the repository (their licences travel with them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# <repo>/src/mailledger/testing/vectors.py → <repo>/../shared/vectors
VECTORS = Path(__file__).resolve().parents[3].parent / "shared" / "vectors"


def load_suite(relative: str) -> list[dict[str, Any]] | None:
    """Every YAML document of one suite file, or None when the vectors aren't there."""
    import yaml  # noqa: PLC0415 - a test dependency, needed only by the conformance tests

    path = VECTORS / relative
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def suite_cases(relative: str) -> list[Any]:
    """One pytest parameter per test of every scenario, as (index, scenario, case).

    Without the vectors, a single skipped case says where they were looked for.
    """
    documents = load_suite(relative)
    if documents is None:
        reason = f"test vectors not found: {VECTORS / relative}"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="vectors-missing")]
    return [
        pytest.param((index, scenario, case), id=test_id)
        for index, scenario in enumerate(documents)
        for test_id, case in scenario["tests"].items()
    ]
