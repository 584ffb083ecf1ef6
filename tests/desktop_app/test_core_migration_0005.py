"""Migration 0005: usage samples gain ``throughput_rps``; older rows read 0, a downgrade
drops the column (and its values) and keeps the rows."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from desktop_app.core.models import Device, UsageSample
from desktop_app.core.workspace import Workspace
from desktop_app.core.workspace_db import head_revision, run_migration


def _columns(db: Path) -> set[str]:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        return {c["name"] for c in sa.inspect(engine).get_columns("usage_samples")}
    finally:
        engine.dispose()


def test_usage_throughput_column_round_trip(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    db = ws.db_path
    assert ws.revision() == head_revision()
    with ws.session() as s:
        s.add(Device(id="dev1", name="cam", host="10.0.0.5", port=8765, info={}))
        s.flush()
        s.add(
            UsageSample(
                device_id="dev1",
                model_name="shapes",
                format="onnx",
                requests=12,
                p50_ms=1.0,
                p90_ms=2.0,
                p99_ms=3.0,
                mean_ms=1.5,
                throughput_rps=0.2,
            )
        )
    with ws.session() as s:
        (stored,) = s.scalars(sa.select(UsageSample)).all()
        assert stored.throughput_rps == 0.2
    ws.close()
    assert "throughput_rps" in _columns(db)

    run_migration(db, "0004", downgrade=True)
    assert "throughput_rps" not in _columns(db)
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:  # a sample written by the 0004 schema, without throughput
        conn.execute(
            sa.text(
                "INSERT INTO usage_samples (device_id, model_name, format, requests, errors, "
                "p50_ms, p90_ms, p99_ms, mean_ms, collected_at) VALUES ('dev1', 'old', 'onnx', "
                "3, 0, 1, 1, 1, 1, '2026-11-26 10:00:00')"
            )
        )
    engine.dispose()

    run_migration(db, "head")
    again = Workspace.open(tmp_path / "ws")
    try:
        with again.session() as s:
            rows = {u.model_name: u.throughput_rps for u in s.scalars(sa.select(UsageSample))}
    finally:
        again.close()
    assert rows == {"shapes": 0.0, "old": 0.0}  # the downgrade dropped the values, kept rows
