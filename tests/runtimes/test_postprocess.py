"""Pre/post-processing agree with Ultralytics' own functions, bit for bit where it matters."""

from __future__ import annotations

import numpy as np
import pytest

from runtimes.detections import Detections
from runtimes.postprocess import decode_yolo_detect, nms, scale_boxes, xywh2xyxy
from runtimes.preprocess import decode_image, letterbox, to_tensor
from tests.fakes import header_bomb

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


@pytest.mark.parametrize(
    "hw", [(480, 640), (640, 480), (1080, 810), (37, 1000), (160, 160), (1, 300), (320, 320)]
)
@pytest.mark.parametrize("target", [(320, 320), (640, 640), (256, 384)])
def test_letterbox_matches_ultralytics(hw: tuple[int, int], target: tuple[int, int]) -> None:
    from ultralytics.data.augment import LetterBox

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
    ours, info = letterbox(img, target)
    theirs = LetterBox(target, auto=False, stride=32)(image=img)
    assert ours.shape == theirs.shape == (*target, 3)
    assert np.array_equal(ours, theirs)
    assert info.orig_hw == hw


def test_to_tensor_matches_ultralytics_division() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)
    ours = to_tensor(img)
    theirs = (
        torch.from_numpy(img).unsqueeze(0).permute(0, 3, 1, 2).flip(1).float().div_(255).numpy()
    )
    assert ours.shape == (1, 3, 64, 48) and ours.dtype == np.float32
    assert np.array_equal(ours, theirs)


def _to_tensor_reference(
    img: np.ndarray, *, rgb: bool = True, scale: float = 1 / 255.0, **norm: list[float]
) -> np.ndarray:
    """to_tensor spelled out: convert the whole image to float32, then scale and normalise."""
    chw = img[:, :, ::-1].transpose(2, 0, 1) if rgb else img.transpose(2, 0, 1)
    out = np.ascontiguousarray(chw[None], dtype=np.float32)
    out = (
        out / np.float32(round(1 / scale))
        if abs(1 / scale - round(1 / scale)) < 1e-6
        else out * np.float32(scale)
    )
    if "mean" in norm:
        out = out - np.asarray(norm["mean"], np.float32).reshape(1, -1, 1, 1)
    if "std" in norm:
        out = out / np.asarray(norm["std"], np.float32).reshape(1, -1, 1, 1)
    return out


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("rgb", [True, False])
def test_to_tensor_plane_by_plane_is_bit_identical(channels: int, rgb: bool) -> None:
    """The per-plane division gives the same float32s as converting the image first, for any
    channel count and order, a strided (cropped) image, and with mean/std after it."""
    rng = np.random.default_rng(channels)
    whole = rng.integers(0, 256, (90, 130, channels), dtype=np.uint8)
    for img in (whole, whole[7:83, 11:121]):  # contiguous, then a view with strides
        assert np.array_equal(to_tensor(img, rgb=rgb), _to_tensor_reference(img, rgb=rgb))
        stats = {
            "mean": [0.485, 0.456, 0.406, 0.5][:channels],
            "std": [0.229, 0.224, 0.225, 0.25][:channels],
        }
        assert np.array_equal(
            to_tensor(img, rgb=rgb, **stats), _to_tensor_reference(img, rgb=rgb, **stats)
        )
        assert np.array_equal(to_tensor(img, scale=1.0), _to_tensor_reference(img, scale=1.0))
        half = to_tensor(img, dtype="float16")
        assert half.dtype == np.float16
        assert np.array_equal(half, _to_tensor_reference(img).astype(np.float16))


def test_to_tensor_writes_every_value_of_a_fresh_tensor() -> None:
    """Each tensor holds its own image's quotients, all 256 byte values included, never what a
    freed tensor of the same size left in the memory it reuses."""
    ramp = np.arange(256 * 3, dtype=np.uint16).reshape(16, 16, 3).astype(np.uint8)
    for value in (0, 255, 17):
        del_me = to_tensor(np.full((16, 16, 3), value, np.uint8))
        assert np.all(del_me == np.float32(value) / np.float32(255))
        del del_me
        assert np.array_equal(to_tensor(ramp), _to_tensor_reference(ramp))


@pytest.mark.parametrize("hw", [(480, 640), (1080, 810), (37, 1000)])
def test_scale_boxes_matches_ultralytics(hw: tuple[int, int]) -> None:
    from ultralytics.utils.ops import scale_boxes as ul_scale_boxes

    rng = np.random.default_rng(2)
    img = np.zeros((*hw, 3), np.uint8)
    _, info = letterbox(img, (320, 320))
    xy = rng.uniform(0, 300, (50, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(1, 60, (50, 2)).astype(np.float32)], axis=1)
    theirs = ul_scale_boxes((320, 320), torch.from_numpy(boxes.copy()), hw).numpy()
    ours = scale_boxes(boxes, info)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("iou", [0.45, 0.7])
def test_nms_matches_torchvision(seed: int, iou: float) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    xy = rng.uniform(0, 200, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (n, 2)).astype(np.float32)], axis=1)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    ours = nms(boxes, scores, iou)
    theirs = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
    assert ours.tolist() == theirs.tolist()


def test_nms_empty() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 0.5).size == 0


@pytest.mark.parametrize("seed", range(3))
def test_decode_matches_ultralytics_nms(seed: int) -> None:
    from ultralytics.utils.nms import non_max_suppression

    rng = np.random.default_rng(seed)
    nc, anchors = 3, 2100
    xywh = np.concatenate(
        [rng.uniform(0, 320, (anchors, 2)), rng.uniform(4, 90, (anchors, 2))], axis=1
    )
    scores = rng.uniform(0, 1, (anchors, nc)) ** 6
    raw = np.concatenate([xywh, scores], axis=1).T[None].astype(np.float32)  # (1, 4 + nc, anchors)
    boxes, conf, cls = decode_yolo_detect(raw, conf_threshold=0.25, iou_threshold=0.7, max_det=300)
    ref = non_max_suppression(torch.from_numpy(raw), 0.25, 0.7, max_det=300)[0].numpy()
    assert len(boxes) == len(ref)
    np.testing.assert_allclose(boxes, ref[:, :4], atol=1e-4)
    np.testing.assert_allclose(conf, ref[:, 4], atol=1e-6)
    assert cls.tolist() == ref[:, 5].astype(int).tolist()


def test_decode_end_to_end_layout() -> None:
    rows = np.array([[[10, 10, 50, 50, 0.9, 1], [5, 5, 9, 9, 0.1, 0]]], np.float32)
    boxes, conf, cls = decode_yolo_detect(
        rows, conf_threshold=0.25, iou_threshold=0.7, max_det=300, layout="xyxy_score_class"
    )
    assert boxes.tolist() == [[10, 10, 50, 50]] and cls.tolist() == [1]
    assert conf.tolist() == pytest.approx([0.9])


def test_xywh2xyxy() -> None:
    out = xywh2xyxy(np.array([[10, 20, 4, 6]], np.float32))
    assert out.tolist() == [[8, 17, 12, 23]]


def test_detections_validate_shapes() -> None:
    with pytest.raises(ValueError):
        Detections(np.zeros((2, 3)), np.zeros(2), np.zeros(2, np.int64))
    d = Detections(
        np.array([[1, 2, 3, 4]], np.float32), np.array([0.5], np.float32), np.array([1]), ("a", "b")
    )
    assert d.to_list() == [
        {"class_id": 1, "class_name": "b", "confidence": 0.5, "xyxy": [1.0, 2.0, 3.0, 4.0]}
    ]


def test_decode_image_errors() -> None:
    from runtimes.errors import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="could not be decoded"):
        decode_image(b"\xff\xd8\xff garbage")


def test_decode_image_refuses_a_bomb_and_unknown_bytes_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cv2

    from runtimes import preprocess
    from runtimes.errors import ImageDecodeError

    small = cv2.imencode(".png", np.full((20, 30, 3), 7, np.uint8))[1].tobytes()
    ppm = b"P6\n30000 30000\n255\n" + bytes(64)  # a header OpenCV reads: not one we vouch for

    def no_decode(*_: object) -> None:
        raise AssertionError("the decoder ran")

    monkeypatch.setattr(preprocess.cv2, "imdecode", no_decode)
    with pytest.raises(ImageDecodeError, match="30000x30000 pixels, over the 100-megapixel"):
        decode_image(header_bomb())
    with pytest.raises(ImageDecodeError, match="not a JPEG, PNG, GIF, BMP, WebP or TIFF"):
        decode_image(ppm)
    with pytest.raises(ImageDecodeError, match="20x30 pixels|30x20 pixels"):
        decode_image(small, max_pixels=599)
    monkeypatch.undo()
    assert decode_image(small, max_pixels=600).shape == (20, 30, 3)
