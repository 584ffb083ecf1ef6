"""Segment, pose and classify models on the agent, end to end: real (tiny, random-weight)
Ultralytics models exported to ONNX packages, pushed by the paired desktop (staged, loaded,
self-tested), then asked over HTTP. The answers carry the masks, keypoints and classes that the
same package gives in the desktop's process, on both inference routes, to an application's API
key too, and in the Studio's inference test."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from desktop_app.core import datasets, studio_ops
from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.devices import PIN_KEY, deploy, desktop_key
from desktop_app.core.models import Device
from desktop_app.core.workspace import Workspace
from device_agent.apikeys import ApiKeys
from device_agent.auth import b64
from device_agent.client import AgentRejectedError
from runtimes.detections import Detections, rle_to_mask
from runtimes.fileio import sha256_bytes
from runtimes.package import SELF_TEST_OUTPUTS
from runtimes.predictor import Predictor
from tests.device_agent.conftest import AgentThread
from tests.device_agent.desktop_helpers import record_device
from tests.fakes import rewrite_package
from tests.ui.fixtures_s2 import add_fake_export, seed_runs

pytest.importorskip("torch")
pytest.importorskip("ultralytics")

TASKS = ("segment", "pose", "classify")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Each task's package (named after the task) and sample images."""
    from tests.exporters.test_tasks_export import export_built

    return {task: export_built(task, "onnx", tmp_path_factory.mktemp(task)) for task in TASKS}


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory, built: dict[str, dict[str, Any]]
) -> Iterator[AgentThread]:
    """One agent with the three models installed by its paired desktop."""
    running = AgentThread(tmp_path_factory.mktemp("agent") / "data").start()
    try:
        with running.client() as client:
            for task in TASKS:
                installed = client.upload_package(built[task]["package"])
                assert installed["name"] == task and installed["self_test"]["passed"], installed
                # beyond boxes: a classifier's top classes, the masks, the keypoints
                report = installed["self_test"]
                checked = {"classify": "classes", "segment": "masks", "pose": "keypoints"}[task]
                assert report[checked] > 0 and report.get("mean_mask_iou") in (None, 1.0), report
        yield running
    finally:
        running.stop()


def local(package: Path, image: bytes, **options: Any) -> tuple[Detections, Any]:
    """The same package's prediction in this process, and its model spec."""
    predictor = Predictor.from_path(package)
    try:
        return predictor.predict_bytes(image, **options)[0], predictor.manifest.model
    finally:
        predictor.close()


def image_of(built: dict[str, dict[str, Any]], task: str) -> tuple[bytes, tuple[int, int]]:
    """A sample image (56 x 80 pixels: not the model's square input) and its height, width."""
    return built[task]["images"][1].read_bytes(), (56, 80)


def both_answers(
    agent: AgentThread, built: dict[str, dict[str, Any]], task: str
) -> tuple[dict[str, Any], dict[str, Any], Detections]:
    """The agent's answer on each route (conf 0.25) and the package's own prediction here."""
    image, _ = image_of(built, task)
    with agent.client() as client:
        named = client.infer_model(task, image, conf=0.25)
        default_route = client.infer(image, model=task, conf=0.25)
    assert named["task"] == default_route["task"] == task
    return named, default_route, local(built[task]["package"], image, conf=0.25)[0]


def test_a_segment_model_answers_a_mask_per_detection_at_the_image_size(
    agent: AgentThread, built: dict[str, dict[str, Any]]
) -> None:
    _, hw = image_of(built, "segment")
    answer, default_route, want = both_answers(agent, built, "segment")
    assert "classification" not in answer and "classification" not in default_route
    assert [d["mask"] for d in default_route["detections"]] == [
        d["mask"] for d in answer["detections"]
    ]
    got = answer["detections"]
    assert want.masks is not None and len(got) == len(want) > 0
    for item, box, mask in zip(got, want.xyxy, want.masks, strict=True):
        assert item["mask"]["size"] == list(hw)
        decoded = rle_to_mask(item["mask"])
        assert decoded.shape == hw and decoded.any()
        # the agent's ONNX Runtime may use other threads: a pixel on an edge may flip
        assert np.count_nonzero(decoded != mask) <= max(2, mask.sum() // 100)
        assert item["xyxy"] == pytest.approx(box.tolist(), abs=0.01)


def test_a_pose_model_answers_keypoints_in_image_pixels(
    agent: AgentThread, built: dict[str, dict[str, Any]]
) -> None:
    answer, default_route, want = both_answers(agent, built, "pose")
    assert want.keypoints is not None and len(answer["detections"]) == len(want) > 0
    for item, other, points in zip(
        answer["detections"], default_route["detections"], want.keypoints, strict=True
    ):
        assert np.shape(item["keypoints"]) == points.shape  # (K, 3): x, y, visibility
        assert np.asarray(item["keypoints"]) == pytest.approx(points, abs=0.01)
        assert other["keypoints"] == item["keypoints"]


def test_a_classifier_answers_its_most_probable_classes(
    agent: AgentThread, built: dict[str, dict[str, Any]]
) -> None:
    image, _ = image_of(built, "classify")
    want, spec = local(built["classify"]["package"], image)
    top = want.top_k(spec.postprocessing.top_k)
    assert len(top) == min(spec.postprocessing.top_k, len(spec.class_names)) >= 2
    with agent.client() as client:
        answer = client.infer_model("classify", image)
        two = client.infer_model("classify", image, top_k=2)
        default_route = client.infer(image, model="classify", top_k=1)

    assert answer["task"] == "classify" and answer["detections"] == []
    for got in (answer["classification"], two["classification"], default_route["classification"]):
        assert [c["class_id"] for c in got] == [c["class_id"] for c in top][: len(got)]
        assert [c["class_name"] for c in got] == [c["class_name"] for c in top][: len(got)]
        assert [c["confidence"] for c in got] == pytest.approx(
            [c["confidence"] for c in top][: len(got)], abs=1e-4
        )
    assert (len(answer["classification"]), len(two["classification"])) == (len(top), 2)
    assert len(default_route["classification"]) == 1

    # JSON body, and an application's API key
    secret = ApiKeys(agent.service.data_dir).create("camera-app")[1]
    as_json = httpx.post(
        f"{agent.url}/v1/models/classify/infer",
        headers={"Authorization": f"Bearer {secret}"},
        json={"image_base64": base64.b64encode(image).decode(), "top_k": 3},
    )
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["classification"] == answer["classification"][:3]


@pytest.mark.parametrize(
    ("route", "top_k", "as_json"),
    [
        ("/v1/models/classify/infer", "0", False),
        ("/v1/models/classify/infer", "two", False),
        ("/v1/models/classify/infer", "1001", False),
        ("/v1/models/classify/infer", True, True),
        ("/v1/models/classify/infer", 2.5, True),
        ("/v1/infer?model=classify", "-1", False),
    ],
)
def test_a_bad_top_k_is_refused_with_one_line(
    agent: AgentThread,
    built: dict[str, dict[str, Any]],
    route: str,
    top_k: Any,
    as_json: bool,
) -> None:
    image, _ = image_of(built, "classify")
    url = f"{agent.url}{route}"
    if as_json:
        body = {"image_base64": base64.b64encode(image).decode(), "top_k": top_k}
        response = httpx.post(url, auth=agent.auth(), json=body)
    else:
        sep = "&" if "?" in route else "?"
        response = httpx.post(f"{url}{sep}top_k={top_k}", auth=agent.auth(), content=image)
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": f"top_k must be a whole number from 1 to 1000, got {top_k!r}"
    }


def test_the_studio_inference_test_lists_a_classifiers_classes(
    agent: AgentThread, built: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    write_sample_dataset(tmp_path / "shapes", count=4, size=64)
    ws = Workspace.open(tmp_path / "ws")
    try:
        datasets.import_dataset(ws, tmp_path / "shapes", "shapes")
        seed_runs(ws)  # the runs an export belongs to
        add_fake_export(ws, "exp-cls", "run-alpha", package=built["classify"]["package"])
        image = built["classify"]["images"][0]
        here = studio_ops.infer_locally(ws, "exp-cls", image)
        assert here["task"] == "classify" and here["detections"] == []
        assert len(here["classification"]) >= 2

        device_id = record_device(ws, agent)
        agent.service.pairing.add(desktop_key(ws).public_raw, "studio tasks test")
        with ws.session() as s:
            s.get(Device, device_id).info = {PIN_KEY: b64(agent.service.identity.key.public_raw)}
        deploy(ws, "exp-cls", device_id)
        there = studio_ops.infer_on_device(ws, device_id, image, model="classify")
        assert there["task"] == "classify" and there["detections"] == []
        assert [c["class_id"] for c in there["classification"]] == [
            c["class_id"] for c in here["classification"]
        ]
    finally:
        ws.close()


def _with_outputs(package: Path, dst: Path, edit: Callable[[dict[str, Any]], bytes | None]) -> Path:
    """``package`` as version 2 with its ``selftest/outputs.json`` edited in place (or replaced
    by the bytes ``edit`` returns), and listed with its new digest."""
    with zipfile.ZipFile(package) as zf:
        outputs = json.loads(zf.read(SELF_TEST_OUTPUTS))
    data = edit(outputs) or json.dumps(outputs).encode()

    def manifest(m: dict[str, Any]) -> dict[str, Any]:
        m["version"] = "2"
        m["files"][SELF_TEST_OUTPUTS] = {"sha256": sha256_bytes(data), "size": len(data)}
        return m

    return rewrite_package(
        package,
        dst,
        manifest=manifest,
        files=lambda name, old: data if name == SELF_TEST_OUTPUTS else old,
    )


@pytest.mark.parametrize("task", TASKS)
def test_a_model_that_answers_otherwise_fails_its_self_test(
    agent: AgentThread, built: dict[str, dict[str, Any]], tmp_path: Path, task: str
) -> None:
    """The export recorded what the model gave on its sample beyond boxes; a package whose
    model answers otherwise on this device (here: the record says so) is not switched to."""

    def other_answer(outputs: dict[str, Any]) -> None:
        if task == "classify":
            assert len(outputs["classes"]) == 5
            for item in outputs["classes"]:
                item["score"] = round(1.0 - item["score"], 6)
        elif task == "segment":
            for rle in outputs["masks"]:
                if rle is not None:  # the mask's runs of ones and zeros trade places
                    rle["counts"] = [0, *rle["counts"]]
        else:
            for points in outputs["keypoints"]:
                for point in points or []:
                    point[0] += 10.0  # every point 10 px to the right
                    point[2] = 1.0

    changed = _with_outputs(
        built[task]["package"], tmp_path / f"{task}-2.outpost.zip", other_answer
    )
    expected = {
        "classify": "of the export's top 5 classes scored differently",
        "segment": "the masks differ from the export's (mean IoU",
        "pose": "detections moved (up to 10.0 px)",
    }[task]
    with agent.client() as client:
        with pytest.raises(AgentRejectedError) as refused:
            client.upload_package(changed)
        assert "self-test failed: " in str(refused.value) and expected in str(refused.value)
        assert client.infer_model(task, image_of(built, task)[0])["version"] == "1"


@pytest.mark.parametrize(
    ("task", "edit"),
    [
        ("segment", lambda o: o["masks"][0].update(counts=[1, 2, 3])),  # not the image's pixels
        ("segment", lambda o: o["masks"][0].update(size=[-1, 4])),
        ("pose", lambda o: o["keypoints"][0].__setitem__(0, [5.0])),  # a point without its y
        ("classify", lambda o: o.update(classes=[{"class_id": -1, "score": 0.5}])),
        ("classify", lambda o: b"{not json"),
    ],
)
def test_a_malformed_outputs_file_is_refused_with_its_reason(
    agent: AgentThread,
    built: dict[str, dict[str, Any]],
    tmp_path: Path,
    task: str,
    edit: Callable[[dict[str, Any]], bytes | None],
) -> None:
    broken = _with_outputs(built[task]["package"], tmp_path / f"{task}-2.outpost.zip", edit)
    with agent.client() as client:
        with pytest.raises(AgentRejectedError) as refused:
            client.upload_package(broken)
        message = str(refused.value)
        assert "selftest/outputs.json is malformed (" in message and "re-export" in message
        assert "\n" not in message
        assert client.infer_model(task, image_of(built, task)[0])["version"] == "1"


class WireLog(httpx.BaseTransport):
    """Passes every request on and records each inference request's content type."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.types: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/infer"):
            self.types.append(request.headers.get("Content-Type"))
        return self.inner.handle_request(request)


def answer_of(reply: dict[str, Any]) -> dict[str, Any]:
    """An inference answer without its timing (the rest must be equal)."""
    return {k: v for k, v in reply.items() if k != "timing_ms"}


@pytest.mark.parametrize("task", TASKS)
def test_a_decoded_frame_gets_the_answer_its_image_gets(
    agent: AgentThread, built: dict[str, dict[str, Any]], task: str
) -> None:
    """A camera app's decoded frame (.npy, BGR or RGB, from the desktop or with an API key)
    gets exactly the answer of the image it was decoded from, masks, keypoints and classes
    included; to an agent of protocol 4 the desktop sends it as a PNG, with the same answer."""
    image, hw = image_of(built, task)
    frame = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    assert frame.shape[:2] == hw
    wire = WireLog()
    with agent.client(transport=wire) as client:
        want = answer_of(client.infer_model(task, image, conf=0.25))
        assert answer_of(client.infer_model(task, frame, conf=0.25)) == want
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        assert answer_of(client.infer_model(task, rgb, conf=0.25, channels="rgb")) == want
        default_route = answer_of(client.infer(image, model=task, conf=0.25))
        assert answer_of(client.infer(frame, model=task, conf=0.25)) == default_route
        assert answer_of(client.infer_model(task, frame, conf=0.25)) == want
        client.protocol = 4  # an agent that does not take frames yet
        assert answer_of(client.infer_model(task, rgb, conf=0.25, channels="rgb")) == want
    npy, octet = "application/x-npy", "application/octet-stream"
    assert wire.types == [octet, npy, npy, octet, npy, npy, octet]

    secret = ApiKeys(agent.service.data_dir).create(f"camera-{task}")[1]
    buffer = io.BytesIO()
    np.save(buffer, rgb)
    app = httpx.post(
        f"{agent.url}/v1/models/{task}/infer",
        headers={"Authorization": f"Bearer {secret}", "Content-Type": npy},
        params={"channels": "rgb", "conf": "0.25"},
        content=buffer.getvalue(),
    )
    assert app.status_code == 200, app.text
    assert answer_of(app.json()) == want
