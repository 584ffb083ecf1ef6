"""Our ONNX Runtime path gives Ultralytics' own detections on the same ONNX file and images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtimes.package import PackageReader
from runtimes.predictor import Predictor
from runtimes.preprocess import read_image
from tests.e2e.conftest import DemoRun

ultralytics = pytest.importorskip("ultralytics")
ASSETS = Path(ultralytics.__file__).parent / "assets"


def _images(demo_run: DemoRun) -> list[Path]:
    samples = sorted((Path(demo_run.summary["dataset"]["path"]) / "images").glob("*.jpg"))[:6]
    return [ASSETS / "bus.jpg", ASSETS / "zidane.jpg", *samples]


@pytest.mark.parametrize("conf", [0.25, 0.05, 0.001])
def test_detections_match_ultralytics_predict(
    demo_run: DemoRun, tmp_path: Path, conf: float
) -> None:
    from ultralytics import YOLO

    with PackageReader(Path(demo_run.summary["export"]["package"])) as reader:
        folder = reader.extract(tmp_path / "pkg")
    predictor = Predictor(folder)
    imgsz = predictor.input_hw[0]
    reference = YOLO(str(folder / predictor.manifest.format.file), task="detect")
    compared = 0
    for image in _images(demo_run):
        ours, _ = predictor.predict(read_image(image), conf=conf, iou=0.7)
        theirs = reference.predict(str(image), imgsz=imgsz, conf=conf, iou=0.7, verbose=False)[
            0
        ].boxes
        assert len(ours) == len(theirs), image.name
        if not len(ours):
            continue
        assert ours.class_id.tolist() == theirs.cls.numpy().astype(int).tolist(), image.name
        assert np.abs(ours.xyxy - theirs.xyxy.numpy()).max() <= 1.0, image.name
        assert np.abs(ours.confidence - theirs.conf.numpy()).max() <= 1e-3, image.name
        compared += len(ours)
    if conf == 0.001:
        assert compared > 0  # the low threshold guarantees boxes to compare, even from a short run
