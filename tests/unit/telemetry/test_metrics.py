"""The metrics' documentation is generated from their declarations and kept current."""

from __future__ import annotations

from pathlib import Path

from service.telemetry.metrics import metrics_table

OPERATIONS_DOC = Path(__file__).resolve().parents[3] / "docs" / "operations.md"


def test_the_operations_doc_lists_every_metric_as_declared():
    table = metrics_table()
    assert "`model_server_cache_hits_total{tier}` | counter" in table
    assert table in OPERATIONS_DOC.read_text(), "docs/operations.md's table is stale: paste its output"
