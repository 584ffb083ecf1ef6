"""Export versions: several exports per run, one default per run, deletion guarded by
deployments, and the ``outpost exports`` commands."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from desktop_app import cli
from desktop_app.core import datasets
from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.errors import NotFoundError
from desktop_app.core.exports import (
    default_export,
    delete_export,
    deployed_on,
    list_exports,
    set_default_export,
)
from desktop_app.core.models import Deployment, Device, Export, TrainingRun
from desktop_app.core.workspace import Workspace
from exporters.base import ExportError

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("versions") / "shapes"
    write_sample_dataset(out, seed=5, count=4, size=48)
    return out


@pytest.fixture
def ws(tmp_path: Path, source: Path) -> Workspace:
    workspace = Workspace.open(tmp_path / "ws")
    datasets.import_yolo(workspace, source, "shapes")
    with workspace.session() as s:
        _, version = datasets.find_version(s, "shapes")
        for i, run_id in enumerate(("run-a", "run-b")):
            s.add(
                TrainingRun(
                    id=run_id,
                    project_id=workspace.default_project_id(),
                    dataset_version_id=version.id,
                    framework="ultralytics",
                    task="detect",
                    model="yolo11n.yaml",
                    status="completed",
                    params={},
                    run_dir=f"runs/{run_id}",
                    final_metrics={},
                    created_at=T0 + timedelta(minutes=i),
                )
            )
    return workspace


def add_export(
    ws: Workspace, export_id: str, run_id: str, minute: int, status: str = "completed"
) -> Path:
    """A recorded export with a package file in its own folder, as ``export_run`` leaves it."""
    folder = Path(ws.root) / "exports" / export_id
    folder.mkdir(parents=True)
    package = folder / f"m-{export_id}.outpost.zip"
    package.write_bytes(b"package " + export_id.encode())
    with ws.session() as s:
        s.add(
            Export(
                id=export_id,
                run_id=run_id,
                format="onnx",
                status=status,
                package_path=ws.relative(package),
                manifest={},
                details={"precision": "fp32", "latency": {"p50_ms": 1.5, "p90_ms": 2.0}},
                created_at=T0 + timedelta(minutes=minute),
            )
        )
    return package


def test_one_default_per_run(ws: Workspace) -> None:
    add_export(ws, "exp-1", "run-a", 1)
    add_export(ws, "exp-2", "run-a", 2)
    add_export(ws, "exp-3", "run-b", 3)
    assert [r["default"] for r in list_exports(ws)] == [False, False, False]
    set_default_export(ws, "exp-1")
    set_default_export(ws, "exp-3")
    assert {r["id"]: r["default"] for r in list_exports(ws)} == {
        "exp-1": True,
        "exp-2": False,
        "exp-3": True,
    }
    row = set_default_export(ws, "exp-2")
    assert row["default"] is True
    flags = {r["id"]: r["default"] for r in list_exports(ws, run="run-a")}
    assert flags == {"exp-1": False, "exp-2": True}  # the other run's default is untouched
    assert default_export(ws, "run-b") is not None and default_export(ws, "run-b").id == "exp-3"  # type: ignore[union-attr]
    assert [r["id"] for r in list_exports(ws, run="run-b")] == ["exp-3"]
    assert list_exports(ws)[0]["latency"]["p50_ms"] == 1.5


def test_default_refuses_unknown_and_incomplete_exports(ws: Workspace) -> None:
    add_export(ws, "exp-bad", "run-a", 1, status="failed_validation")
    with pytest.raises(ExportError, match="failed_validation; only a completed export"):
        set_default_export(ws, "exp-bad")
    with pytest.raises(NotFoundError, match="no export 'exp-none'"):
        set_default_export(ws, "exp-none")


def test_delete_removes_package_and_row(ws: Workspace) -> None:
    package = add_export(ws, "exp-1", "run-a", 1)
    add_export(ws, "exp-2", "run-a", 2)
    set_default_export(ws, "exp-1")
    result = delete_export(ws, "exp-1")
    assert result == {"id": "exp-1", "deleted": True, "was_default": True, "deployed_on": []}
    assert not package.exists() and not package.parent.exists()
    assert [r["id"] for r in list_exports(ws)] == ["exp-2"]
    with pytest.raises(NotFoundError):
        delete_export(ws, "exp-1")


def test_delete_removes_a_package_kept_elsewhere_with_its_digests(ws: Workspace) -> None:
    from runtimes.package_digests import write_digests

    inside = add_export(ws, "exp-1", "run-a", 1)
    elsewhere = Path(ws.root) / "shared" / inside.name
    elsewhere.parent.mkdir()
    inside.rename(elsewhere)
    write_digests(elsewhere)
    with ws.session() as s:
        s.get(Export, "exp-1").package_path = ws.relative(elsewhere)  # type: ignore[union-attr]
    delete_export(ws, "exp-1")
    assert list(elsewhere.parent.iterdir()) == []  # the package and its digests file


def test_delete_refuses_a_deployed_export_unless_forced(ws: Workspace) -> None:
    package = add_export(ws, "exp-1", "run-a", 1)
    with ws.session() as s:
        s.add(Device(id="dev-1", name="cam", host="127.0.0.1", port=8000))
        s.add(Device(id="dev-2", name="gate", host="127.0.0.1", port=8001))
        s.flush()
        s.add(Deployment(export_id="exp-1", device_id="dev-1", model_name="m", status="installed"))
        s.add(Deployment(export_id="exp-1", device_id="dev-2", model_name="m", status="installed"))
        s.add(
            Deployment(
                export_id="exp-1",
                device_id="dev-2",
                model_name="m",
                status="installed",
                action="uninstall",
                created_at=datetime.now(timezone.utc) + timedelta(seconds=1),
            )
        )
    assert deployed_on(ws, "exp-1") == ["dev-1"]
    with pytest.raises(
        ExportError, match="deployed on dev-1; uninstall it there first or pass --force"
    ):
        delete_export(ws, "exp-1")
    assert package.exists()
    result = delete_export(ws, "exp-1", force=True)
    assert result["deployed_on"] == ["dev-1"] and not package.exists()
    with ws.session() as s:
        assert s.query(Deployment).count() == 0
        assert s.get(Export, "exp-1") is None


def test_cli_exports_default_delete_and_list(
    ws: Workspace, capfd: pytest.CaptureFixture[str]
) -> None:
    add_export(ws, "exp-1", "run-a", 1)
    add_export(ws, "exp-2", "run-b", 2)
    root = str(ws.root)
    assert cli.main(["--workspace", root, "exports", "default", "exp-1"]) == 0
    assert "exp-1 is now the default of run run-a" in capfd.readouterr().out
    assert cli.main(["--workspace", root, "exports", "list", "--run", "run-a", "--json"]) == 0
    rows = json.loads(capfd.readouterr().out)
    assert [(r["id"], r["default"]) for r in rows] == [("exp-1", True)]
    assert cli.main(["--workspace", root, "exports", "list"]) == 0
    table = capfd.readouterr().out
    assert "default" in table and "exp-2" in table
    assert cli.main(["--workspace", root, "exports", "delete", "exp-2", "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["deleted"] is True
    assert cli.main(["--workspace", root, "exports", "delete", "exp-9"]) != 0
    assert "no export 'exp-9'" in capfd.readouterr().err
