"""Consistent backups of a workspace into a new folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from desktop_app.core import workspace_db as db
from desktop_app.core.errors import DestinationNotEmptyError, WorkspaceError
from runtimes.fileio import atomic_write_text, fsync_dir

if TYPE_CHECKING:
    from desktop_app.core.workspace import Workspace

BACKUP_INFO = "outpost-backup.json"


def write_backup(ws: Workspace, dest: Path) -> Path:
    """Copy ``ws`` into ``dest``; see :meth:`Workspace.backup`."""
    dest = dest.expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DestinationNotEmptyError(
            f"{dest} is not an empty folder; choose a new or empty folder for the backup"
        )
    if dest == ws.root or ws.root in dest.parents:
        raise WorkspaceError(
            f"{dest} is inside the workspace {ws.root}; choose a folder outside it"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        _fill(ws, tmp)
        if dest.exists():
            dest.rmdir()  # empty (checked above); a rename cannot replace a folder everywhere
        os.rename(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _fill(ws: Workspace, out: Path) -> None:
    # The database first: blobs are immutable and only added, so every blob the copied
    # database refers to is already on disk when the blob folder is copied next.
    db.sqlite_copy(ws.db_path, out / ws.db_path.name)
    if ws.mlflow_db_path.is_file():
        db.sqlite_copy(ws.mlflow_db_path, out / ws.mlflow_db_path.name)
    ws.blobs.copy_tree(out / "blobs")
    for name in ("runs", "exports"):
        src = ws.root / name
        if src.is_dir():
            shutil.copytree(src, out / name, symlinks=True)
        else:
            (out / name).mkdir()
    info = {
        "source": str(ws.root),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "schema_revision": ws.revision(),
    }
    atomic_write_text(out / BACKUP_INFO, json.dumps(info, indent=2) + "\n")
