"""Self-test before the switch, and the runtime choice with loud fallbacks.

Packages carry a sample input and the detections their own runtime gave on it at export
time; the agent checks them on the device before a version serves. Execution providers
are faked at the backend boundary (a backend that reports an accelerator, or fails to
start it; onnxruntime's provider list patched).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_agent.client import AgentRejectedError
from device_agent.store import ModelStore, compare_self_test
from exporters.base import ExportArtifact
from exporters.package import SELF_TEST_INPUT, build_package
from runtimes.backends import BackendRegistry, OnnxRuntimeBackend
from runtimes.backends.base import BackendInfo
from runtimes.detections import Detections, mask_to_rle
from runtimes.package import PackageReader, SelfTest, SelfTestOutputs, write_package
from runtimes.predictor import Predictor
from tests.fakes import (
    CLASS_NAMES,
    DEFAULT_ROWS,
    EXPECTED,
    make_detect_onnx,
    make_image_bytes,
    make_package,
    manifest_fields,
)

Rows = Sequence[tuple[float, float, float, float, int, float]]
ACCEL = "FakeAccelExecutionProvider"
CPU = "CPUExecutionProvider"


def make_selftest_package(
    out_zip: Path,
    version: str = "1",
    rows: Rows = DEFAULT_ROWS,
    expected_rows: Rows | None = None,
    name: str = "shapes",
) -> Path:
    """A package of the fake detector (``rows``) whose self-test was recorded from a model
    giving ``expected_rows`` (the same rows by default: a package that passes)."""
    with tempfile.TemporaryDirectory(prefix="outpost-st-") as tmp:
        folder = Path(tmp)
        sample = folder / "input.png"
        sample.write_bytes(make_image_bytes())
        (folder / "ref").mkdir()
        reference = make_detect_onnx(folder / "ref" / "model.onnx", rows=expected_rows or rows)
        write_package(
            folder / "ref.outpost.zip", manifest_fields(name, version), {"model.onnx": reference}
        )
        predictor = Predictor.from_path(folder / "ref.outpost.zip")
        got, _ = predictor.predict(np.asarray(_decode(sample)))
        predictor.close()
        expected = [
            {"class_id": int(c), "score": float(s), "xyxy": [float(v) for v in box]}
            for box, s, c in zip(
                got.xyxy.tolist(), got.confidence.tolist(), got.class_id.tolist(), strict=True
            )
        ]
        model = make_detect_onnx(folder / "model.onnx", rows=rows)
        fields = {
            **manifest_fields(name, version),
            "self_test": {"input": SELF_TEST_INPUT, "expected": expected},
        }
        write_package(Path(out_zip), fields, {"model.onnx": model, SELF_TEST_INPUT: sample})
    return Path(out_zip)


def _decode(path: Path) -> np.ndarray:
    from runtimes.preprocess import read_image

    return read_image(path)


def _leftovers(data_dir: Path, name: str = "shapes") -> list[str]:
    return sorted(p.name for p in (data_dir / "models" / name).iterdir())


# --- export side -----------------------------------------------------------------------------


def _artifact(tmp_path: Path) -> ExportArtifact:
    build = tmp_path / "build"
    build.mkdir()
    return ExportArtifact(
        format_key="onnx",
        runtime="onnxruntime",
        model_file=make_detect_onnx(build / "model.onnx"),
        class_names=CLASS_NAMES,
        architecture="fake",
        input_name="images",
        input_shape=(1, 3, 64, 64),
        output_layout="xywh_classes",
        precision="fp32",
    )


@pytest.mark.parametrize("with_image", [True, False])
def test_export_writes_a_self_test_computed_with_the_package_runtime(
    tmp_path: Path, with_image: bool
) -> None:
    sample = None
    if with_image:  # a "validation image", larger than the model input: shrunk to fit
        sample = tmp_path / "val.png"
        sample.write_bytes(make_image_bytes(128, 128))
    out = tmp_path / "shapes.outpost.zip"
    manifest = build_package(
        _artifact(tmp_path),
        name="shapes",
        version="1",
        out_path=out,
        framework="test",
        task="detect",
        provenance={},
        sample_image=sample,
    )
    spec = manifest.self_test
    assert spec is not None and spec.input == SELF_TEST_INPUT
    assert spec.tolerance.iou == 0.9 and spec.tolerance.score == 0.05
    with PackageReader(out) as reader:
        reader.verify()
        assert SELF_TEST_INPUT in reader.manifest.files
    # The fake detector answers the same on any square image: the expected detections are
    # exactly what the runtime gives, scaled to the stored 64 x 64 sample.
    assert [(d.class_id, d.score, d.xyxy) for d in spec.expected] == [
        (e["class_id"], e["confidence"], e["xyxy"]) for e in EXPECTED
    ]


def test_manifest_without_self_test_keeps_the_old_json(tmp_path: Path) -> None:
    make_package(tmp_path / "old.outpost.zip")
    with PackageReader(tmp_path / "old.outpost.zip") as reader:
        assert reader.manifest.self_test is None
        assert "self_test" not in reader.manifest.to_json()


# --- the check itself ------------------------------------------------------------------------


def _dets(rows: list[tuple[int, float, list[float]]]) -> Detections:
    return Detections(
        xyxy=np.array([r[2] for r in rows], np.float32).reshape(-1, 4),
        confidence=np.array([r[1] for r in rows], np.float32),
        class_id=np.array([r[0] for r in rows], np.int64),
        class_names=CLASS_NAMES,
    )


def test_compare_self_test_tolerances() -> None:
    spec = SelfTest.model_validate(
        {
            "input": "selftest/input.png",
            "expected": [
                {"class_id": 0, "score": 0.9, "xyxy": [8, 8, 24, 24]},
                {"class_id": 1, "score": 0.27, "xyxy": [30, 30, 40, 40]},  # borderline
            ],
        }
    )
    near = compare_self_test(spec, _dets([(0, 0.88, [8.2, 8, 24, 24.1])]), 0.25)
    assert near["passed"] and near["expected"] == 2 and near["got"] == 1
    assert 0 < near["max_iou_deviation"] < 0.1
    moved = compare_self_test(spec, _dets([(0, 0.9, [12, 12, 28, 28])]), 0.25)
    assert not moved["passed"] and moved["mismatches"] == 2  # one missing, one unexpected
    rescored = compare_self_test(spec, _dets([(0, 0.7, [8, 8, 24, 24])]), 0.25)
    assert not rescored["passed"] and rescored["max_score_deviation"] == pytest.approx(0.2)
    extra = compare_self_test(
        spec, _dets([(0, 0.9, [8, 8, 24, 24]), (1, 0.6, [40, 40, 60, 60])]), 0.25
    )
    assert not extra["passed"] and extra["got"] == 2


def test_compare_self_test_forgives_nms_going_either_way_between_near_duplicates() -> None:
    """Two boxes of a class that overlap by about the NMS threshold (0.7) are kept or merged
    on a hair's difference in score or corner, as a GPU's arithmetic gives; that passes
    (counted as ``nms_swaps``), a box missing or added anywhere else does not."""
    a, b = [0.0, 0.0, 20.0, 20.0], [0.0, 3.0, 20.0, 23.0]  # IoU 17/23 = 0.74
    spec = SelfTest.model_validate(
        {
            "input": "selftest/input.png",
            "expected": [
                {"class_id": 0, "score": 0.8, "xyxy": a},
                {"class_id": 0, "score": 0.79, "xyxy": b},
                {"class_id": 1, "score": 0.9, "xyxy": [40, 40, 60, 60]},
            ],
        }
    )
    far = (1, 0.9, [40.0, 40.0, 60.0, 60.0])
    merged = _dets([(0, 0.8, a), far])  # the device's NMS merged b into a
    report = compare_self_test(spec, merged, 0.25, nms_iou=0.7)
    assert report["passed"] and report["nms_swaps"] == 1
    assert not compare_self_test(spec, merged, 0.25)["passed"]  # without the NMS threshold
    swapped = _dets([(0, 0.79, b), far])  # the device kept b, not a
    assert compare_self_test(spec, swapped, 0.25, nms_iou=0.7)["passed"]
    split = SelfTest.model_validate(
        {**spec.model_dump(), "expected": spec.model_dump()["expected"][::2]}
    )
    extra = _dets([(0, 0.8, a), (0, 0.79, b), far])  # the device kept both
    assert compare_self_test(split, extra, 0.25, nms_iou=0.7)["passed"]
    lost = _dets([(0, 0.8, a), (0, 0.79, b)])  # the class-1 box is gone: nothing near it
    report = compare_self_test(spec, lost, 0.25, nms_iou=0.7)
    assert not report["passed"] and report["mismatches"] == 1
    elsewhere = _dets([(0, 0.8, a), (0, 0.79, b), far, (0, 0.6, [60, 0, 80, 20])])
    assert not compare_self_test(spec, elsewhere, 0.25, nms_iou=0.7)["passed"]
    other_class = _dets([(0, 0.8, a), (1, 0.79, b), far])  # NMS is per class here
    assert not compare_self_test(spec, other_class, 0.25, nms_iou=0.7)["passed"]
    assert compare_self_test(spec, other_class, 0.25, nms_iou=0.7, agnostic=True)["passed"]


def _probs(*values: float) -> Detections:
    none = _dets([])
    return Detections(
        none.xyxy, none.confidence, none.class_id, CLASS_NAMES, probs=np.array(values, np.float32)
    )


def test_compare_self_test_checks_a_classifiers_classes() -> None:
    spec = SelfTest.model_validate({"input": "selftest/input.png", "expected": []})
    outputs = SelfTestOutputs.model_validate(
        {"classes": [{"class_id": 2, "score": 0.6}, {"class_id": 0, "score": 0.3}]}
    )
    same = compare_self_test(spec, _probs(0.32, 0.1, 0.58), 0.25, outputs=outputs)
    assert same["passed"] and same["classes"] == 2 and same["class_mismatches"] == 0
    assert same["max_score_deviation"] == pytest.approx(0.02, abs=1e-6)
    other = compare_self_test(spec, _probs(0.05, 0.9, 0.05), 0.25, outputs=outputs)
    assert not other["passed"] and other["class_mismatches"] == 2
    assert not compare_self_test(spec, _dets([]), 0.25, outputs=outputs)["passed"]  # no probs
    assert "classes" not in compare_self_test(spec, _dets([]), 0.25)


def test_compare_self_test_checks_masks_and_keypoints_of_the_paired_detections() -> None:
    spec = SelfTest.model_validate(
        {
            "input": "selftest/input.png",
            "expected": [
                {"class_id": 0, "score": 0.9, "xyxy": [8, 8, 24, 24]},
                {"class_id": 1, "score": 0.8, "xyxy": [30, 30, 50, 50]},
            ],
        }
    )
    rows = [(0, 0.9, [8.0, 8.0, 24.0, 24.0]), (1, 0.8, [30.0, 30.0, 50.0, 50.0])]
    boxes = _dets(rows)
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 8:24, 8:24] = True
    masks[1, 30:50, 30:50] = True
    recorded = SelfTestOutputs.model_validate({"masks": [mask_to_rle(m) for m in masks]})

    def with_masks(m: np.ndarray) -> Detections:
        return Detections(boxes.xyxy, boxes.confidence, boxes.class_id, CLASS_NAMES, masks=m)

    same = compare_self_test(spec, with_masks(masks), 0.25, outputs=recorded)
    assert same["passed"] and same["masks"] == 2 and same["mean_mask_iou"] == 1.0
    edge = masks.copy()
    edge[0, 8, 8:24] = False  # one row of 16 lost: IoU 0.94
    assert compare_self_test(spec, with_masks(edge), 0.25, outputs=recorded)["passed"]
    garbage = np.roll(masks, 12, axis=2)  # the masks off their objects
    report = compare_self_test(spec, with_masks(garbage), 0.25, outputs=recorded)
    assert not report["passed"] and report["mask_mismatch"] and report["mismatches"] == 0
    assert report["mean_mask_iou"] < 0.5

    points = [[[10.0, 10.0, 0.9], [20.0, 20.0, 0.3]], [[35.0, 40.0, 0.8], [45.0, 45.0, 0.9]]]
    recorded = SelfTestOutputs.model_validate({"keypoints": [points[0], None]})

    def with_points(p: list[list[list[float]]]) -> Detections:
        kp = np.array(p, np.float32)
        return Detections(boxes.xyxy, boxes.confidence, boxes.class_id, CLASS_NAMES, keypoints=kp)

    same = compare_self_test(spec, with_points(points), 0.25, outputs=recorded, image_hw=(64, 64))
    assert same["passed"] and same["keypoints"] == 1 and same["keypoints_moved"] == 0
    unseen_moved = [[[10.5, 10.0, 0.9], [2.0, 60.0, 0.3]], points[1]]  # barely seen: ignored
    assert compare_self_test(spec, with_points(unseen_moved), 0.25, outputs=recorded)["passed"]
    moved = [[[16.0, 10.0, 0.9], [20.0, 20.0, 0.3]], points[1]]
    report = compare_self_test(spec, with_points(moved), 0.25, outputs=recorded, image_hw=(64, 64))
    assert not report["passed"] and report["keypoints_moved"] == 1 and report["keypoint_mismatch"]
    assert report["max_keypoint_deviation_px"] == 6.0
    # boxes alike (clipped to the image) whose scores came out in another order on the
    # device (TF32 on an NVIDIA H200 did this): each keypoint set is still found
    alike = SelfTest.model_validate(
        {
            "input": "selftest/input.png",
            "expected": [
                {"class_id": 0, "score": 0.7301, "xyxy": [0, 0, 64, 64]},
                {"class_id": 0, "score": 0.7300, "xyxy": [0, 0, 64, 64]},
            ],
        }
    )
    both = SelfTestOutputs.model_validate({"keypoints": [points[0], points[1]]})
    reordered = Detections(
        np.array([[0, 0, 64, 64]] * 2, np.float32),
        np.array([0.7302, 0.7299], np.float32),
        np.zeros(2, np.int64),
        CLASS_NAMES,
        keypoints=np.array([points[1], points[0]], np.float32),
    )
    report = compare_self_test(alike, reordered, 0.25, 0.7, outputs=both, image_hw=(64, 64))
    assert report["passed"] and report["keypoints"] == 2, report
    # a runtime that decodes keypoints wrong moves most of them; one of three may be
    # compared with a near-duplicate's (NMS kept it instead of its own) and the test passes
    three = SelfTest.model_validate(
        {
            "input": "selftest/input.png",
            "expected": [
                {"class_id": 0, "score": 0.9 - i / 10, "xyxy": [20 * i, 0, 20 * i + 15, 15]}
                for i in range(3)
            ],
        }
    )
    spots = [[[20.0 * i + 5, 5.0, 0.9]] for i in range(3)]
    recorded3 = SelfTestOutputs.model_validate({"keypoints": spots})

    def answer(shift: list[float]) -> Detections:
        kp = np.array([[[x + d, y, v] for x, y, v in p] for p, d in zip(spots, shift, strict=True)])
        return Detections(
            np.array([[20 * i, 0, 20 * i + 15, 15] for i in range(3)], np.float32),
            np.array([0.9, 0.8, 0.7], np.float32),
            np.zeros(3, np.int64),
            CLASS_NAMES,
            keypoints=kp.astype(np.float32),
        )

    one = compare_self_test(three, answer([0, 9, 0]), 0.25, outputs=recorded3, image_hw=(64, 64))
    assert one["passed"] and one["keypoints_moved"] == 1
    two = compare_self_test(three, answer([9, 9, 0]), 0.25, outputs=recorded3, image_hw=(64, 64))
    assert not two["passed"] and two["keypoints_moved"] == 2
    # 2 % of a 640 px sample's side allows 12.8 px
    big = compare_self_test(spec, with_points(moved), 0.25, outputs=recorded, image_hw=(640, 480))
    assert big["passed"]


# --- the agent ------------------------------------------------------------------------------


def test_install_runs_the_self_test_and_reports_it(agent: Any, tmp_path: Path) -> None:
    good = make_selftest_package(tmp_path / "v1.outpost.zip")
    with agent.client() as client:
        result = client.upload_package(good)
        assert result["self_test"]["passed"] is True
        assert result["self_test"]["expected"] == 2 and result["self_test"]["got"] == 2
        assert result["warnings"] == [] and result["activated"] is True
        assert client.infer(make_image_bytes())["detections"] == list(EXPECTED)


def test_a_package_without_self_test_installs_with_a_warning(agent: Any, package: Path) -> None:
    with agent.client() as client:
        result = client.upload_package(package)
    assert result["self_test"] is None
    assert len(result["warnings"]) == 1 and "has no self-test" in result["warnings"][0]


def test_failed_self_test_refuses_the_switch_and_the_old_version_serves(
    agent: Any, tmp_path: Path
) -> None:
    good = make_selftest_package(tmp_path / "v1.outpost.zip")
    moved = [(cx + 6, cy, w, h, c, s) for cx, cy, w, h, c, s in DEFAULT_ROWS]
    # v2's model answers with boxes moved 6 px, but its self-test says where they were
    bad = make_selftest_package(
        tmp_path / "v2.outpost.zip", "2", rows=moved, expected_rows=DEFAULT_ROWS
    )
    with agent.client() as client:
        client.upload_package(good)
        with pytest.raises(AgentRejectedError) as err:
            client.upload_package(bad, resumable=True)
        assert err.value.status == 422
        message = err.value.message
        assert message.startswith("self-test failed: expected 2 detections, got 2")
        assert "max IoU deviation" in message and "previous version keeps serving" in message
        result = client.infer(make_image_bytes())
        assert (result["version"], result["detections"]) == ("1", list(EXPECTED))
    assert _leftovers(agent.service.data_dir) == ["1", "active.json"]


# --- runtime choice --------------------------------------------------------------------------


class FakeAccelBackend(OnnxRuntimeBackend):
    """ONNX Runtime on the CPU that reports a fake accelerator provider (or fails to start it).

    ``slow`` makes the accelerator slower than the CPU, so the benchmark must pick the CPU.
    """

    fail: str | None = None
    slow = False

    @classmethod
    def probe(cls) -> BackendInfo:
        return BackendInfo(cls.key, cls.formats, True, version="test", providers=(ACCEL, CPU))

    def __init__(
        self, model_path: Path, *, threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        self.on_accel = bool(providers) and providers[0] == ACCEL  # type: ignore[index]
        if self.on_accel and self.fail:
            raise RuntimeError(self.fail)
        super().__init__(model_path, threads=threads, providers=[CPU])

    @property
    def active_providers(self) -> list[str]:
        return [ACCEL, CPU] if self.on_accel else [CPU]

    def run(self, tensor: np.ndarray) -> np.ndarray:
        if self.on_accel and self.slow:
            import time

            time.sleep(0.01)
        return super().run(tensor)


def _registry(**attrs: Any) -> BackendRegistry:
    backend = type("FakeAccelBackend", (FakeAccelBackend,), attrs)
    registry = BackendRegistry()
    registry.register(backend)
    return registry


def test_the_faster_provider_serves_and_the_choice_survives_a_restart(
    start_agent: Any, tmp_path: Path
) -> None:
    registry = _registry(slow=True)
    data = tmp_path / "agent"
    agent = start_agent(data, registry=registry)
    package = make_selftest_package(tmp_path / "v1.outpost.zip")
    with agent.client() as client:
        result = client.upload_package(package)
        info = client.info()["models"][0]
    assert set(result["benchmark"]) == {ACCEL, CPU}
    assert result["benchmark"][CPU] < result["benchmark"][ACCEL]  # the accelerator sleeps
    assert result["providers"] == [CPU] and result["fallback"] is None
    assert (info["runtime"], info["providers"], info["benchmark"]) == (
        "onnxruntime",
        [CPU],
        result["benchmark"],
    )
    agent.stop()
    again = start_agent(data, registry=registry)
    with again.client() as client:
        model = client.info()["models"][0]
        assert client.infer(make_image_bytes())["detections"] == list(EXPECTED)
    assert model["providers"] == [CPU] and model["benchmark"] == result["benchmark"]


def test_an_accelerator_that_works_and_is_fast_is_chosen(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "data", registry=_registry())
    model = store.install(make_selftest_package(tmp_path / "v1.outpost.zip"))
    assert model.benchmark is not None and set(model.benchmark) == {ACCEL, CPU}
    chosen = min(model.benchmark, key=lambda p: model.benchmark[p])  # type: ignore[index]
    assert model.providers[0] == chosen and model.fallback is None


def test_an_accelerator_that_fails_to_start_is_a_loud_fallback(
    start_agent: Any, tmp_path: Path
) -> None:
    agent = start_agent(registry=_registry(fail="FakeAccel: device lost"))
    with agent.client() as client:
        result = client.upload_package(make_selftest_package(tmp_path / "v1.outpost.zip"))
        assert client.infer(make_image_bytes())["detections"] == list(EXPECTED)
    assert result["providers"] == [CPU]
    fallback = result["fallback"]
    assert (fallback["wanted"], fallback["using"]) == (ACCEL, CPU)
    assert "failed to initialise" in fallback["reason"] and "device lost" in fallback["reason"]
    assert any(w.startswith(f"wanted {ACCEL}, using {CPU}") for w in result["warnings"])


def test_a_requested_provider_that_is_missing_falls_back_loudly(agent: Any, tmp_path: Path) -> None:
    package = make_selftest_package(tmp_path / "v1.outpost.zip")
    with agent.client() as client:
        result = client.upload_package(package, provider="CUDAExecutionProvider")
    fallback = result["fallback"]
    assert fallback["wanted"] == "CUDAExecutionProvider" and fallback["using"] == CPU
    assert "not available on this device" in fallback["reason"]


def test_onnxruntime_listing_a_provider_it_cannot_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import onnxruntime

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", CPU]
    )
    store = ModelStore(tmp_path / "data")
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        model = store.install(make_selftest_package(tmp_path / "v1.outpost.zip"))
    assert model.providers == [CPU]
    assert model.fallback is not None and model.fallback["wanted"] == "CUDAExecutionProvider"
    assert "did not initialise" in model.fallback["reason"]
    assert model.install_result()["fallback"] == model.fallback


def test_a_provider_no_runtime_knows_is_refused_and_case_is_forgiven(
    agent: Any, tmp_path: Path
) -> None:
    """A typo would otherwise install on the CPU with only a warning: it is refused, naming
    the providers here; a known name in another case is the provider itself (no fallback)."""
    package = make_selftest_package(tmp_path / "v1.outpost.zip")
    with agent.client() as client:
        with pytest.raises(AgentRejectedError) as typo:
            client.upload_package(package, provider="FooProvider")
        assert typo.value.status == 422
        assert "no runtime knows an execution provider called 'FooProvider'" in typo.value.message
        assert CPU in typo.value.message and agent.service.store.models() == []
        result = client.upload_package(package, provider=CPU.lower())
    assert result["providers"] == [CPU] and result["fallback"] is None


def test_staging_the_active_version_reports_what_serves(tmp_path: Path) -> None:
    """Staging the package already active stages nothing: the answer describes the version
    serving (no fallback), not the load that was dropped (which fell back to the CPU)."""
    package = make_selftest_package(tmp_path / "v1.outpost.zip")
    store = ModelStore(tmp_path / "data")
    store.load()
    store.install(package)
    again = store.install(package, activate=False, provider="CUDAExecutionProvider")
    result = again.install_result()
    assert result["activated"] is False and result["fallback"] is None
    assert any("already the active version; nothing to stage" in w for w in result["warnings"])
    assert store.get("shapes").fallback is None
