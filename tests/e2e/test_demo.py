"""The whole loop, end to end: the demo, then the workspace it leaves behind."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from runtimes.package import PackageReader
from tests.e2e.conftest import DemoRun, run_outpost


def test_demo_runs_the_whole_loop(demo_run: DemoRun) -> None:
    s = demo_run.summary
    assert Path(s["workspace"]) == demo_run.workspace
    assert s["dataset"]["name"] == "shapes"
    assert s["run"]["id"].startswith("run-")
    assert Path(s["run"]["best_checkpoint"]).exists()
    assert s["run"]["mlflow_run_id"]
    with PackageReader(Path(s["export"]["package"])) as reader:
        reader.verify()
        assert reader.manifest.provenance.run_id == s["run"]["id"]
        assert reader.manifest.model.class_names == ["circle", "square", "triangle"]
    assert s["deployment"] == "installed"
    assert s["device"]["address"] == "127.0.0.1"
    agent_rows = [r for r in s["latency"] if r["device"].endswith("(agent)")]
    assert len(agent_rows) == 1
    assert agent_rows[0]["format"] == "onnx"
    assert agent_rows[0]["requests"] == s["inference"]["images"] > 0
    assert 0 < agent_rows[0]["p50_ms"] <= agent_rows[0]["p90_ms"]
    assert (
        "device" in demo_run.stderr and "p50 ms" in demo_run.stderr
    )  # the human table went to stderr under --json


def test_demo_opens_no_external_connection(demo_run: DemoRun) -> None:
    log = demo_run.audit_log
    assert not log.exists() or log.read_text() == "", log.read_text()


def test_run_metrics_recorded_per_epoch(demo_run: DemoRun) -> None:
    run_id = demo_run.summary["run"]["id"]
    proc = run_outpost("runs", "show", run_id, "--workspace", str(demo_run.workspace), "--json")
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert run["status"] == "completed"
    assert [e["epoch"] for e in run["epochs"]] == [1, 2, 3]
    for epoch in run["epochs"]:
        for key in (
            "train/box_loss",
            "metrics/mAP50(B)",
            "metrics/mAP50-95(B)",
            "val/box_loss",
            "lr/pg0",
        ):
            assert key in epoch["metrics"]
    assert "metrics/mAP50(B)" in run["final_metrics"]
    db = sqlite3.connect(demo_run.workspace / "mlflow.db")
    try:
        steps = db.execute(
            "SELECT DISTINCT step FROM metrics WHERE run_uuid = ? AND key = 'metrics/mAP50B' ORDER BY step",
            (run["mlflow_run_id"],),
        ).fetchall()
    finally:
        db.close()
    assert [s for (s,) in steps] == [1, 2, 3]


def test_workspace_check_and_backup_after_demo(demo_run: DemoRun, tmp_path: Path) -> None:
    proc = run_outpost("workspace", "check", "--workspace", str(demo_run.workspace), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    proc = run_outpost(
        "workspace",
        "backup",
        "--out",
        str(tmp_path / "bk"),
        "--workspace",
        str(demo_run.workspace),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    copy = sqlite3.connect(tmp_path / "bk" / "outpost.db")
    try:
        assert copy.execute("SELECT count(*) FROM training_runs").fetchone()[0] == 1
        assert copy.execute("SELECT count(*) FROM usage_samples").fetchone()[0] >= 1
    finally:
        copy.close()


def test_predict_cli_is_offline(demo_run: DemoRun, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    images = sorted((Path(demo_run.summary["dataset"]["path"]) / "images").glob("*.jpg"))[:3]
    proc = run_outpost(
        "predict",
        demo_run.summary["export"]["package"],
        *map(str, images),
        "--json",
        "--conf",
        "0.01",
        env={"OUTPOST_NETWORK_AUDIT": str(audit)},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["results"]) == 3
    assert all("timing_ms" in r for r in out["results"])
    assert not audit.exists()


def test_devices_are_recorded(demo_run: DemoRun) -> None:
    proc = run_outpost(
        "devices", "list", "--known", "--workspace", str(demo_run.workspace), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    devices = json.loads(proc.stdout)
    assert [d["id"] for d in devices] == [demo_run.summary["device"]["id"]]


def test_dataset_import_of_a_non_yolo_folder_leaves_nothing(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    ws = tmp_path / "ws"
    proc = run_outpost(
        "dataset", "import", str(junk), "--format", "yolo", "--name", "x", "--workspace", str(ws)
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "images" in lines[0]
    db = sqlite3.connect(ws / "outpost.db")
    try:
        assert db.execute("SELECT count(*) FROM datasets").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM blobs").fetchone()[0] == 0
    finally:
        db.close()
    assert not [p for p in (ws / "blobs").rglob("*") if p.is_file()]


def test_demo_twice_in_a_row_from_the_same_folder(tmp_path: Path) -> None:
    """Without --workspace each run gets a fresh workspace under ./.outpost-demo/."""
    for _ in range(2):
        proc = run_outpost(
            "demo",
            "--json",
            "--epochs",
            "1",
            "--imgsz",
            "64",
            "--count",
            "16",
            cwd=tmp_path,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)["deployment"] == "installed"
    workspaces = sorted((tmp_path / ".outpost-demo").iterdir())
    assert len(workspaces) == 2
    assert all((w / "outpost.db").exists() for w in workspaces)
