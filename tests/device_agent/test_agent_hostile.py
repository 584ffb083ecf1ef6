"""Hostile packages, each sent through the real HTTP install path of a running agent.

Every one must be refused with a 4xx and a one-line reason, write nothing outside the
agent's staging folders (the file tree is compared before and after), and leave the old
model serving.
"""

from __future__ import annotations

import io
import json
import secrets
import stat
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from onnx import TensorProto, numpy_helper

from device_agent.client import AgentRejectedError
from runtimes.fileio import sha256_bytes
from tests.fakes import EXPECTED, make_detect_onnx, make_image_bytes, make_package


def _entries(package: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(package) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def _hostile_zip(
    base: Path,
    out: Path,
    extra: list[tuple[zipfile.ZipInfo | str, bytes]],
    *,
    list_them: bool = True,
    edit: Callable[[dict[str, Any]], None] | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """``base`` (a valid v2 package) plus ``extra`` entries, listed in its manifest with
    their true digests (so only the hostile property can be the reason for a refusal)."""
    entries = _entries(base)
    manifest = json.loads(entries.pop("manifest.json"))
    if list_them:
        for info, data in extra:
            name = info.filename if isinstance(info, zipfile.ZipInfo) else info
            manifest["files"][name] = {"sha256": sha256_bytes(data), "size": len(data)}
    if edit is not None:
        edit(manifest)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(buf, "w", compression) as zf:
            zf.writestr("manifest.json", json.dumps(manifest))
            for name, data in entries.items():
                zf.writestr(name, data)
            for info, data in extra:
                zf.writestr(info, data)
    out.write_bytes(buf.getvalue())
    return out


def _link(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    info.create_system = 3
    return info


def _external_data_model(path: Path, location: str) -> bytes:
    """An ONNX detector whose head tensor claims to live in the external file ``location``."""
    make_detect_onnx(path)
    import onnx

    model = onnx.load(str(path))
    head = next(t for t in model.graph.initializer if t.name == "head")
    array = numpy_helper.to_array(head)
    external = TensorProto(name="head", data_type=TensorProto.FLOAT, dims=list(array.shape))
    external.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(array.nbytes))):
        entry = external.external_data.add()
        entry.key, entry.value = key, value
    head.CopyFrom(external)
    return bytes(model.SerializeToString())


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def serving(agent: Any, package: Path, tmp_path: Path) -> Any:
    """The agent with shapes v1 serving, and a valid v2 to make hostile variants from."""
    with agent.client() as client:
        client.upload_package(package)
    agent.v2 = make_package(tmp_path / "v2.outpost.zip", version="2")
    return agent


OUTSIDE = f"outpost-hostile-{secrets.token_hex(4)}"


def _cases(tmp_path: Path, v2: Path) -> dict[str, tuple[Path, str]]:
    out = tmp_path / "hostile"
    out.mkdir(exist_ok=True)
    model = _entries(v2)["model.onnx"]
    cases: dict[str, tuple[Path, str]] = {}

    def case(kind: str, path: Path, reason: str) -> None:
        cases[kind] = (path, reason)

    case(
        "zip-slip",
        _hostile_zip(v2, out / "slip.zip", [("../x", b"escaped")]),
        "'../x' points outside the package",
    )
    case(
        "deep-zip-slip",
        _hostile_zip(v2, out / "deep.zip", [(f"a/../../../../{OUTSIDE}", b"escaped")]),
        "points outside the package",
    )
    case(
        "absolute-path",
        _hostile_zip(v2, out / "abs.zip", [(f"/tmp/{OUTSIDE}", b"escaped")]),
        "points outside the package",
    )
    case(
        "symlink",
        _hostile_zip(
            v2, out / "symlink.zip", [(_link("data/passwd", "/etc/passwd"), b"/etc/passwd")]
        ),
        "'data/passwd' is a link",
    )
    case(
        "hard-link (a second entry aliasing a name)",
        _hostile_zip(v2, out / "hard.zip", [("model.onnx", b"another model")], list_them=False),
        "'model.onnx' appears twice",
    )
    bomb = b"\0" * (64 << 20)
    case(
        "zip-bomb",
        _hostile_zip(v2, out / "bomb.zip", [("weights.bin", bomb)]),
        "'weights.bin' expands suspiciously",
    )
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir(exist_ok=True)
    for label, location in (("relative", "../../etc/passwd"), ("absolute", "/etc/passwd")):
        evil = _external_data_model(onnx_dir / f"{label}.onnx", location)
        case(
            f"onnx-external-data-{label}",
            _hostile_zip(
                v2,
                out / f"onnx-{label}.zip",
                [],
                edit=lambda m, evil=evil: m["files"].update(
                    {"model.onnx": {"sha256": sha256_bytes(evil), "size": len(evil)}}
                ),
            ),
            f"reads external data from {location!r}, outside its package",
        )
        # the model entry itself is replaced below
        path = cases[f"onnx-external-data-{label}"][0]
        entries = _entries(path)
        entries["model.onnx"] = evil
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries.items():
                zf.writestr(name, data)
        path.write_bytes(buf.getvalue())
    case(
        "lying-hash",
        _hostile_zip(
            v2,
            out / "lie.zip",
            [],
            edit=lambda m: m["files"]["model.onnx"].update({"sha256": sha256_bytes(model + b"!")}),
        ),
        "sha256 mismatch for model.onnx",
    )
    case(
        "huge-manifest",
        _hostile_zip(
            v2,
            out / "huge.zip",
            [],
            edit=lambda m: m["provenance"].update({"tools": {"padding": " " * (50 << 20)}}),
        ),
        "manifest.json is larger than 4 MiB",
    )
    return cases


KINDS = [
    "zip-slip",
    "deep-zip-slip",
    "absolute-path",
    "symlink",
    "hard-link (a second entry aliasing a name)",
    "zip-bomb",
    "onnx-external-data-relative",
    "onnx-external-data-absolute",
    "lying-hash",
    "huge-manifest",
]


@pytest.mark.parametrize("resumable", [True, False], ids=["chunked", "single-shot"])
def test_hostile_packages_are_refused(serving: Any, tmp_path: Path, resumable: bool) -> None:
    agent = serving
    cases = _cases(tmp_path, agent.v2)
    assert sorted(cases) == sorted(KINDS)
    data_dir = Path(agent.service.data_dir)
    before = _files(tmp_path)
    for kind in KINDS:
        path, reason = cases[kind]
        with agent.client() as client:
            with pytest.raises(AgentRejectedError) as err:
                client.upload_package(path, resumable=resumable)
            assert 400 <= err.value.status < 500, (kind, err.value)
            assert reason in err.value.message, (kind, err.value.message)
            assert "\n" not in err.value.message
            result = client.infer(make_image_bytes())
            assert (result["version"], result["detections"]) == ("1", list(EXPECTED)), kind
        assert _files(tmp_path) == before, kind  # nothing left anywhere under the test folder
        assert not (data_dir / "models" / "shapes" / "x").exists()
    assert sorted(p.name for p in (data_dir / "models" / "shapes").iterdir()) == [
        "1",
        "active.json",
    ]
    assert not (Path("/tmp") / OUTSIDE).exists()
    assert not any(Path("/").glob(f"{OUTSIDE}*"))


def test_onnx_external_data_inside_the_package_is_allowed(agent: Any, tmp_path: Path) -> None:
    """The check refuses escapes only: weights stored beside the model, listed, load fine."""
    import onnx

    folder = tmp_path / "ext"
    folder.mkdir()
    make_detect_onnx(folder / "model.onnx")
    model = onnx.load(str(folder / "model.onnx"))
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    from runtimes.package import write_package
    from tests.fakes import manifest_fields

    write_package(
        tmp_path / "ext.outpost.zip",
        manifest_fields(),
        {"model.onnx": folder / "model.onnx", "model.onnx.data": folder / "model.onnx.data"},
    )
    with agent.client() as client:
        assert client.upload_package(tmp_path / "ext.outpost.zip")["version"] == "1"
        assert client.infer(make_image_bytes())["detections"] == list(EXPECTED)
