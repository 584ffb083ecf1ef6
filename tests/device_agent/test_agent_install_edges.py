"""Installs at their edges: zip entries zipfile cannot read (encrypted, an unknown
compression) and other spellings of a checked name are refused with a 4xx; the very same
package installed again never leaves its version's folder missing (a failed switch, a kill
between the renames); a commit that fails keeps no upload slot it does not need, and one whose
result cannot be kept still answers that the new version serves; a second piece layout for an
upload being streamed is refused at once without stopping the event loop."""

from __future__ import annotations

import errno
import io
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

from device_agent.client import AgentRejectedError
from device_agent.errors import StorageFullError
from device_agent.http_api import UPLOADS_KEY
from device_agent.store import ModelStore
from runtimes.package import _check_member_name
from tests.device_agent.stream_faults import serving_version
from tests.fakes import EXPECTED, make_image_bytes, make_package


def _patch_central_entry(
    data: bytes, name: bytes, *, flag: int = 0, method: int | None = None
) -> bytes:
    """Set general-purpose ``flag`` bits and/or the compression ``method`` of ``name``'s
    central-directory entry (what zipfile trusts when it opens a member)."""
    buf = bytearray(data)
    at = buf.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", buf, at + 28)[0]
        if bytes(buf[at + 46 : at + 46 + name_len]) == name:
            flags = struct.unpack_from("<H", buf, at + 8)[0]
            struct.pack_into("<H", buf, at + 8, flags | flag)
            if method is not None:
                struct.pack_into("<H", buf, at + 10, method)
            return bytes(buf)
        at = buf.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name!r} not in the zip")


@pytest.mark.parametrize(
    "how", [{"flag": 0x1}, {"method": 99}], ids=["encrypted-manifest", "unknown-compression"]
)
@pytest.mark.parametrize("resumable", [True, False], ids=["chunked", "single-shot"])
def test_an_entry_zipfile_cannot_read_is_refused_with_its_reason(
    agent: Any, package: Path, tmp_path: Path, how: dict[str, int], resumable: bool
) -> None:
    """zipfile raises RuntimeError (encrypted) or NotImplementedError (a compression it does
    not know) for such an entry: both are refused before reading, as a 4xx with the reason."""
    with agent.client() as client:
        client.upload_package(package)
    hostile = tmp_path / "hostile.outpost.zip"
    base = make_package(tmp_path / "v2.outpost.zip", version="2")
    hostile.write_bytes(_patch_central_entry(base.read_bytes(), b"manifest.json", **how))
    with agent.client() as client, pytest.raises(AgentRejectedError) as err:
        client.upload_package(hostile, resumable=resumable, retries=0)
    assert err.value.status == 422, err.value
    assert ("encrypted" if "flag" in how else "compression method 99") in err.value.message
    assert agent.service.app[UPLOADS_KEY]._scan() == []  # a refused package keeps no upload
    with agent.client() as client:
        assert serving_version(client) == "1"


def test_failed_switch_to_the_same_package_keeps_the_active_version_on_disk(
    tmp_path: Path, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The active package installed again while active.json cannot be written (disk full):
    the install is refused, and the active version's folder is put back as it was (it used to
    be deleted on the way, so the next start served nothing)."""
    data = tmp_path / "data"
    ModelStore(data).install(package)
    store = ModelStore(data)
    store.load()

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write_active", full)
    with pytest.raises(StorageFullError):
        store.install(package)
    monkeypatch.undo()
    assert (data / "models" / "shapes" / "1" / "manifest.json").exists()
    assert not [p.name for p in (data / "models" / "shapes").iterdir() if p.name.startswith(".")]
    restarted = ModelStore(data)
    assert restarted.load() == []
    detections, _ = restarted.get("shapes").predict_bytes(make_image_bytes())
    assert detections.to_list() == list(EXPECTED)


def test_kill_while_replacing_the_same_package_leaves_a_working_model(
    tmp_path: Path, package: Path
) -> None:
    """A kill -9 between the two renames of ``ModelStore._place`` (the active folder put
    aside, the new copy not yet in place): the next start puts the folder back and serves it
    (it used to remove it as a leftover and serve nothing)."""
    data = tmp_path / "data"
    ModelStore(data).install(package)
    script = textwrap.dedent(
        f"""
        import os, pathlib
        from device_agent.store import ModelStore
        real = pathlib.Path.rename
        def rename(self, target):
            if self.name.startswith(".staging-"):
                os._exit(9)  # killed right here
            return real(self, target)
        pathlib.Path.rename = rename
        store = ModelStore(pathlib.Path({str(data)!r}))
        store.load()
        store.install(pathlib.Path({str(package)!r}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parents[2], timeout=120
    )
    assert done.returncode == 9
    restarted = ModelStore(data)
    problems = restarted.load()
    assert problems == [], problems
    detections, _ = restarted.get("shapes").predict_bytes(make_image_bytes())
    assert detections.to_list() == list(EXPECTED)


def test_a_second_layout_for_an_upload_being_streamed_is_refused_at_once(
    agent: Any, package: Path
) -> None:
    """While a stream holds an upload, opening the same package with another piece size used
    to wait up to 30 s for the stream with the upload manager's lock held; a commit took that
    lock on the event loop, so the whole agent (readiness, inference) stopped answering. Now
    the new layout is refused at once with 409 (retry when the stream ends), and the commit
    takes the lock off the event loop."""
    import threading
    import time

    import httpx

    from device_agent.client import hash_pieces
    from device_agent.http_api import UPLOADS_KEY
    from tests.device_agent.conftest import wait_for

    manager = agent.service.app[UPLOADS_KEY]
    data = package.read_bytes()
    size = len(data)
    sha, pieces = hash_pieces(package, 256)
    release = threading.Event()

    class SlowFile(io.BytesIO):
        def read(self, n: int = -1) -> bytes:  # the first piece, then the sender stalls
            if self.tell() >= 256:
                release.wait(30)
            return super().read(min(n, 256))

    with agent.client() as client:
        upload = client.create_upload(size, sha, package.name, piece_size=256, pieces=pieces)
    results: list[Any] = []

    def stream() -> None:
        with agent.client() as c:
            results.append(c.put_stream(upload["id"], SlowFile(data), 0, size, 256, pieces))

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    try:
        wait_for(lambda: manager._streaming(upload["id"]), "the stream to hold the upload")
        _, other = hash_pieces(package, 512)
        t0 = time.perf_counter()
        with agent.client() as c, pytest.raises(AgentRejectedError) as refused:
            c.create_upload(size, sha, package.name, piece_size=512, pieces=other)
        assert refused.value.status == 409 and "being sent" in refused.value.message
        assert time.perf_counter() - t0 < 5  # not the 30 s the stream could hold it
        assert not manager._lock.locked()
        with agent.client() as c, pytest.raises(AgentRejectedError):
            c.commit_upload("0" * 32)  # no such upload: answered, the loop free
        assert httpx.get(f"{agent.url}/v1/ready", timeout=10).status_code == 200
    finally:
        release.set()
        sender.join(30)
    assert results and results[0]["offset"] == size


def _aliased_package(tmp_path: Path, alias: str, data: bytes) -> Path:
    """A valid v2 package plus the entry ``alias`` (``./NAME``: the same file once
    extracted), listed in its manifest with its true digest."""
    import json

    from runtimes.fileio import sha256_bytes

    base = make_package(tmp_path / "v2.outpost.zip", version="2")
    with zipfile.ZipFile(base) as zf:
        entries = {info.filename: zf.read(info) for info in zf.infolist()}
    manifest = json.loads(entries.pop("manifest.json"))
    manifest["files"][alias] = {"sha256": sha256_bytes(data), "size": len(data)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for name, content in entries.items():
            zf.writestr(name, content)
        zf.writestr(alias, data)
    out = tmp_path / "alias.outpost.zip"
    out.write_bytes(buf.getvalue())
    return out


def test_a_dot_slash_alias_of_the_manifest_is_refused(tmp_path: Path) -> None:
    """``./manifest.json`` used to pass the name check (PurePosixPath drops ``.``) and the
    "appears twice" check, then overwrite the verified manifest.json when extracted: the model
    installed was described by a manifest no digest covered (here version 9 where the verified
    manifest says 2). Another spelling of a name is refused."""
    import json

    from runtimes.errors import PackageError

    base = make_package(tmp_path / "v2.outpost.zip", version="2")
    with zipfile.ZipFile(base) as zf:
        lying = json.loads(zf.read("manifest.json"))
    lying["version"] = "9"
    package = _aliased_package(tmp_path, "./manifest.json", json.dumps(lying).encode())
    with pytest.raises(PackageError, match="another spelling of 'manifest.json'"):
        ModelStore(tmp_path / "data").install(package)


def test_a_dot_slash_alias_of_the_model_file_is_refused(tmp_path: Path) -> None:
    from runtimes.errors import PackageError
    from tests.fakes import make_detect_onnx

    other = make_detect_onnx(tmp_path / "o.onnx", rows=((32.0, 32.0, 10.0, 10.0, 1, 0.95),))
    package = _aliased_package(tmp_path, "./model.onnx", other.read_bytes())
    with pytest.raises(PackageError, match="another spelling"):
        ModelStore(tmp_path / "data").install(package)
    for name in ("a//model.onnx", "a/./b", "dir/"):
        if name != "dir/":
            with pytest.raises(PackageError, match="another spelling"):
                _check_member_name(name)
    assert str(_check_member_name("dir/")) == "dir"  # a folder's entry keeps its "/"


def test_a_commit_that_fails_unexpectedly_does_not_hold_an_upload_slot(
    agent: Any, tmp_path: Path
) -> None:
    """A commit that fails in a way a retry would not mend (a refused package, or a defect:
    here the install raises RuntimeError) drops its upload: it used to stay, count against
    the four open uploads and never be evicted (whole, opened since the start), so after
    four such commits every new upload got 429 for a day. Full storage keeps it for a retry."""
    from device_agent.client import hash_pieces
    from device_agent.http_api import UPLOADS_KEY

    manager = agent.service.app[UPLOADS_KEY]
    real_install = agent.service.store.install

    def defect(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a defect")

    agent.service.store.install = defect
    try:
        for version in ("7", "8", "9", "10"):
            pkg = make_package(tmp_path / f"d{version}.outpost.zip", version=version)
            with agent.client() as client, pytest.raises(AgentRejectedError) as failed:
                client.upload_package(pkg, resumable=True, retries=0)
            assert failed.value.status == 500
        assert manager._scan() == []

        def full(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device")

        agent.service.store.install = full
        kept = make_package(tmp_path / "k.outpost.zip", version="11")
        with agent.client() as client, pytest.raises(AgentRejectedError) as failed:
            client.upload_package(kept, resumable=True, retries=0)
        assert failed.value.status == 507
        assert len(manager._scan()) == 1  # kept: the commit may be retried once there is room
    finally:
        agent.service.store.install = real_install

    for version in ("2", "3", "4", "5"):
        pkg = make_package(tmp_path / f"v{version}.outpost.zip", version=version)
        hostile = tmp_path / f"hostile-{version}.outpost.zip"
        hostile.write_bytes(_patch_central_entry(pkg.read_bytes(), b"manifest.json", flag=0x1))
        with agent.client() as client, pytest.raises(AgentRejectedError):
            client.upload_package(hostile, resumable=True, retries=0)
    good = make_package(tmp_path / "v6.outpost.zip", version="6")
    sha, _ = hash_pieces(good, 1 << 20)
    with agent.client() as client:
        client.create_upload(good.stat().st_size, sha, good.name)  # not 429: no slot held


def test_a_failed_commit_answer_means_the_old_version_still_serves(
    agent: Any, package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills between the switch and ``uploads.finish`` (result.json): the commit
    used to answer 507 "free some space ... and retry" while version 2 was already serving.
    It answers the install's result, and the upload's bytes are dropped."""
    from device_agent.http_api import UPLOADS_KEY

    with agent.client() as client:
        client.upload_package(package)
    manager = agent.service.app[UPLOADS_KEY]

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manager, "finish", full)
    v2 = make_package(tmp_path / "v2.outpost.zip", version="2")
    with agent.client() as client:
        assert client.upload_package(v2, resumable=True, retries=0)["version"] == "2"
        assert client.infer(make_image_bytes())["version"] == "2"
    assert manager._scan() == []


@pytest.mark.parametrize(
    "entries",
    [(("x", b"1"), ("x/y", b"2")), (("x/", b""), ("x", b"1"))],
    ids=["file-and-folder", "folder-entry-and-file"],
)
def test_a_name_that_is_both_a_file_and_a_folder_is_refused(
    tmp_path: Path, entries: tuple[tuple[str, bytes], ...]
) -> None:
    """Extracting ``x`` and ``x/y`` failed with an OSError that read as a data-folder problem;
    it is the package's, and is refused with its reason before anything is written."""
    from runtimes.errors import PackageError

    base = make_package(tmp_path / "v2.outpost.zip", version="2")
    package = tmp_path / "clash.outpost.zip"
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(package, "w") as out:
        for info in src.infolist():
            out.writestr(info, src.read(info))
        for name, data in entries:
            out.writestr(name, data)
    with pytest.raises(PackageError, match="which is a file|appears twice"):
        ModelStore(tmp_path / "data").install(package)
    assert not (tmp_path / "data" / "models" / "shapes").exists()
