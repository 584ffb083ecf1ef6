"""ModelStore: verified installs, atomic switch, rollback, and nothing broken by a bad package."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from device_agent.errors import (
    AmbiguousModelError,
    InstallError,
    ModelNotFoundError,
    NoModelError,
    RollbackError,
)
from device_agent.store import ModelStore
from runtimes.errors import PackageError
from runtimes.package import write_package
from tests.fakes import (
    EXPECTED,
    flip_last_byte,
    make_image_bytes,
    make_package,
    manifest_fields,
    rewrite_package,
)


def _serves(store: ModelStore, name: str = "shapes") -> str:
    """Run one prediction through ``name``; return the version that answered."""
    model = store.get(name)
    detections, timing = model.predict_bytes(make_image_bytes())
    assert detections.to_list() == list(EXPECTED)
    assert timing.total_ms >= 0
    return model.version


def test_concurrent_requests_share_the_model_but_not_its_runtime_call(
    tmp_path: Path, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the runtime call holds the model: while one request's call is in flight, the next
    decodes its image and builds its tensor, then waits; a third waits before decoding (two in
    the pipeline at once). The calls never overlap and every answer is right."""
    model = ModelStore(tmp_path / "data").install(package.read_bytes())
    predictor, backend = model.predictor, model.predictor.backend
    real_run, real_prepare = backend.run, predictor.prepare
    first_running, second_prepared = threading.Event(), threading.Event()
    third_prepared = threading.Event()
    calls: list[int] = []
    prepared_meanwhile: list[bool] = []
    running = [0]

    def run(tensor: Any) -> Any:
        running[0] += 1
        calls.append(running[0])  # how many calls are in flight, this one included
        try:
            if len(calls) == 1:
                first_running.set()
                assert second_prepared.wait(30), "the second request waited for the first"
                # the third stays out of the pipeline while two are in it
                prepared_meanwhile.append(third_prepared.wait(0.5))
            return real_run(tensor)
        finally:
            running[0] -= 1

    prepares = [0]

    def prepare(img: Any, **kwargs: Any) -> Any:
        prepared = real_prepare(img, **kwargs)
        prepares[0] += 1
        if prepares[0] == 2:
            second_prepared.set()
        elif prepares[0] == 3:
            third_prepared.set()
        return prepared

    monkeypatch.setattr(backend, "run", run)
    monkeypatch.setattr(predictor, "prepare", prepare)
    image = make_image_bytes()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(model.predict_bytes, image)
        assert first_running.wait(30)
        later = [pool.submit(model.predict_bytes, image) for _ in range(2)]
        answers = [first.result(60)] + [future.result(60) for future in later]
    assert calls == [1, 1, 1] and prepared_meanwhile == [False]
    for detections, timing in answers:
        assert detections.to_list() == list(EXPECTED)
        assert timing.inference_ms >= 0


def _model_dir_entries(data_dir: Path, name: str = "shapes") -> list[str]:
    return sorted(p.name for p in (data_dir / "models" / name).iterdir())


def _active(data_dir: Path, name: str = "shapes") -> dict[str, Any]:
    return json.loads((data_dir / "models" / name / "active.json").read_text())


def test_good_install_serves_and_is_recorded(tmp_path: Path, package: Path) -> None:
    store = ModelStore(tmp_path / "data")
    model = store.install(package.read_bytes())
    assert (model.name, model.version, model.format, model.runtime) == (
        "shapes",
        "1",
        "onnx",
        "onnxruntime",
    )
    assert model.providers and model.previous_version is None
    assert _serves(store) == "1"
    assert _model_dir_entries(tmp_path / "data") == ["1", "active.json"]
    assert _active(tmp_path / "data")["active"] == {"folder": "1", "version": "1"}
    assert (tmp_path / "data" / "models" / "shapes" / "1" / "model.onnx").is_file()
    described = model.describe()
    assert described["class_names"] == ["circle", "square"]
    assert described["input"]["shape"] == [1, 3, 64, 64]


def test_install_from_a_path(tmp_path: Path, package: Path) -> None:
    store = ModelStore(tmp_path / "data")
    assert store.install(package).version == "1"
    assert _serves(store) == "1"


def _no_manifest(data: dict[str, Any]) -> None:
    return None


def _schema_99(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "schema_version": 99}


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("wrong-sha256", "sha256 mismatch for model.onnx"),
        ("no-manifest", "no manifest.json"),
        ("schema-99", "unknown package schema version 99"),
        ("not-a-zip", "not a package zip"),
        ("listed-file-missing", "missing model.onnx"),
    ],
)
def test_bad_package_is_refused_and_previous_keeps_serving(
    tmp_path: Path, package: Path, kind: str, reason: str
) -> None:
    store = ModelStore(tmp_path / "data")
    store.install(package)
    good_v2 = make_package(tmp_path / "v2.outpost.zip", version="2")
    bad = tmp_path / "bad.outpost.zip"
    if kind == "wrong-sha256":
        rewrite_package(good_v2, bad, files=flip_last_byte)
    elif kind == "no-manifest":
        rewrite_package(good_v2, bad, manifest=_no_manifest)
    elif kind == "schema-99":
        rewrite_package(good_v2, bad, manifest=_schema_99)
    elif kind == "listed-file-missing":
        rewrite_package(good_v2, bad, files=lambda name, data: None)
    else:
        bad.write_bytes(b"this is not a zip file at all")

    with pytest.raises(PackageError, match=reason):
        store.install(bad.read_bytes())

    assert _serves(store) == "1"
    assert _model_dir_entries(tmp_path / "data") == ["1", "active.json"]  # no staging left
    assert _active(tmp_path / "data")["active"]["version"] == "1"


def test_model_that_does_not_load_is_refused_and_staging_removed(
    tmp_path: Path, package: Path
) -> None:
    store = ModelStore(tmp_path / "data")
    store.install(package)
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x08\x07 definitely not a protobuf model")
    broken = write_package(
        tmp_path / "broken.outpost.zip", manifest_fields(version="2"), {"model.onnx": garbage}
    )
    assert broken.version == "2"

    with pytest.raises(InstallError, match="does not load or run"):
        store.install(tmp_path / "broken.outpost.zip")

    assert _serves(store) == "1"
    assert _model_dir_entries(tmp_path / "data") == ["1", "active.json"]


def test_new_version_switches_keeps_previous_and_rolls_back(tmp_path: Path, package: Path) -> None:
    data = tmp_path / "data"
    store = ModelStore(data)
    store.install(package)
    v2 = store.install(make_package(tmp_path / "v2.outpost.zip", version="2"))
    assert v2.previous_version == "1"
    assert _serves(store) == "2"
    assert _active(data)["previous"] == {"folder": "1", "version": "1"}
    assert _model_dir_entries(data) == ["1", "2", "active.json"]

    back = store.rollback("shapes")
    assert (back.version, back.previous_version) == ("1", "2")
    assert _serves(store) == "1"
    assert _active(data)["active"]["version"] == "1"
    assert _active(data)["previous"]["version"] == "2"


def test_only_active_and_previous_versions_stay_on_disk(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = ModelStore(data)
    for version in ("1", "2", "3"):
        store.install(make_package(tmp_path / f"v{version}.outpost.zip", version=version))
    assert _model_dir_entries(data) == ["2", "3", "active.json"]


def test_rollback_without_previous_is_refused(tmp_path: Path, package: Path) -> None:
    store = ModelStore(tmp_path / "data")
    store.install(package)
    with pytest.raises(RollbackError, match="no previous version"):
        store.rollback("shapes")
    assert _serves(store) == "1"


def test_same_package_twice_is_idempotent(tmp_path: Path, package: Path) -> None:
    data = tmp_path / "data"
    store = ModelStore(data)
    store.install(package)
    again = store.install(package.read_bytes())
    assert again.version == "1" and again.previous_version is None
    assert _serves(store) == "1"
    assert _model_dir_entries(data) == ["1", "active.json"]


def test_same_version_with_other_content_installs_side_by_side(
    tmp_path: Path, package: Path
) -> None:
    data = tmp_path / "data"
    store = ModelStore(data)
    store.install(package)
    other = make_package(tmp_path / "other.outpost.zip", rows=((32.0, 32.0, 10.0, 10.0, 1, 0.95),))
    model = store.install(other)
    assert model.version == "1"
    assert model.folder.name.startswith("1-") and len(model.folder.name) == 14
    assert [d["class_name"] for d in model.predict_bytes(make_image_bytes())[0].to_list()] == [
        "square"
    ]
    assert _active(data)["previous"]["folder"] == "1"


def test_unsafe_version_gets_a_digest_folder(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "data")
    model = store.install(make_package(tmp_path / "odd.outpost.zip", version="2024/05 beta"))
    assert model.version == "2024/05 beta"
    assert len(model.folder.name) == 12 and model.folder.parent.name == "shapes"


def test_restart_loads_active_models(tmp_path: Path, package: Path) -> None:
    data = tmp_path / "data"
    first = ModelStore(data)
    first.install(package)
    first.install(make_package(tmp_path / "v2.outpost.zip", version="2"))
    first.install(make_package(tmp_path / "boxes.outpost.zip", name="boxes", version="7"))
    (data / "models" / "shapes" / ".staging-leftover").mkdir()  # an interrupted install

    second = ModelStore(data)
    assert second.load() == []
    assert [m.name for m in second.models()] == ["boxes", "shapes"]
    assert _serves(second, "shapes") == "2"
    assert second.get("shapes").previous_version == "1"
    assert _serves(second, "boxes") == "7"
    assert not (data / "models" / "shapes" / ".staging-leftover").exists()


def test_restart_falls_back_to_previous_when_active_is_broken(
    tmp_path: Path, package: Path
) -> None:
    data = tmp_path / "data"
    first = ModelStore(data)
    first.install(package)
    first.install(make_package(tmp_path / "v2.outpost.zip", version="2"))
    (data / "models" / "shapes" / "2" / "model.onnx").write_bytes(b"corrupted on disk")

    second = ModelStore(data)
    problems = second.load()
    assert any("serving previous version 1" in p for p in problems)
    assert _serves(second) == "1"


def test_resolve_errors_are_typed(tmp_path: Path, package: Path) -> None:
    store = ModelStore(tmp_path / "data")
    with pytest.raises(NoModelError, match="no model is installed"):
        store.resolve(None)
    store.install(package)
    assert store.resolve(None).name == "shapes"
    with pytest.raises(ModelNotFoundError, match="'nope' is not installed; installed: shapes"):
        store.resolve("nope")
    store.install(make_package(tmp_path / "boxes.outpost.zip", name="boxes"))
    with pytest.raises(
        AmbiguousModelError, match=r"several models are installed \(boxes, shapes\)"
    ):
        store.resolve(None)


def test_corrupt_active_record_is_reported_and_repaired_by_install(
    tmp_path: Path, package: Path
) -> None:
    data = tmp_path / "data"
    ModelStore(data).install(package)
    (data / "models" / "shapes" / "active.json").write_text('{"active": {"folder": "../../etc"}}')

    store = ModelStore(data)
    problems = store.load()
    assert len(problems) == 1 and "active.json is corrupt" in problems[0]
    assert store.models() == []

    store.install(make_package(tmp_path / "v2.outpost.zip", version="2"))
    assert _serves(store) == "2"
    assert ModelStore(data).load() == []
