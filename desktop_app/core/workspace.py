"""The workspace: one folder that holds all of Outpost's state on this machine.

Layout::

    outpost.db      SQLite (WAL), schema managed by alembic migrations
    blobs/          content-addressed images and files (blobs/ab/abcdef...)
    runs/           training runs
    exports/        exported packages
    backups/        automatic database copies taken before a migration
    mlflow.db       MLflow tracking store (sqlite)
    yolo_config/    Ultralytics settings folder (YOLO_CONFIG_DIR)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from desktop_app.core import workspace_db as db
from desktop_app.core.blobs import BlobStore
from desktop_app.core.errors import NotFoundError, WorkspaceError
from desktop_app.core.models import Project
from desktop_app.core.workspace_check import CheckReport

DB_NAME = "outpost.db"
MLFLOW_DB_NAME = "mlflow.db"
DEFAULT_PROJECT = "default"
ENV_VAR = "OUTPOST_WORKSPACE"
_FOLDERS = ("blobs", "runs", "exports", "backups", "yolo_config")

__all__ = ["CheckReport", "Workspace", "default_workspace_dir"]


def default_workspace_dir() -> Path:
    """``$OUTPOST_WORKSPACE`` when set, else ``<user data dir>/outpost/workspace``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("outpost", appauthor=False)) / "workspace"


class Workspace:
    """An open workspace. Create one with :meth:`Workspace.open`; close it with :meth:`close`
    (or use it as a context manager)."""

    def __init__(self, root: Path, engine: Engine) -> None:
        self.root = root
        self.engine = engine
        self.blobs = BlobStore(self.blobs_dir)
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    # ---- opening -------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path | str | None = None, create: bool = True) -> Workspace:
        """Open the workspace at ``root`` (default: :func:`default_workspace_dir`).

        A new database is created at the newest schema. An existing one that is older is
        first copied to ``backups/outpost-<timestamp>-pre-<rev>.db`` and then migrated.

        Args:
            root: The workspace folder.
            create: Create the folder and database when missing; when False, a missing
                workspace is an error.

        Raises:
            WorkspaceError: the folder is not a workspace, cannot be written, was written by a
                newer Outpost, or its migration failed.
        """
        root_path = Path(root).expanduser() if root is not None else default_workspace_dir()
        root_path = root_path.resolve()
        db_path = root_path / DB_NAME
        if not create and not db_path.is_file():
            raise WorkspaceError(
                f"no workspace at {root_path} (no {DB_NAME}); create it or pass --workspace"
            )
        if root_path.exists() and not root_path.is_dir():
            raise WorkspaceError(f"{root_path} is a file, not a folder; choose another --workspace")
        try:
            for name in _FOLDERS:
                (root_path / name).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(
                f"cannot create the workspace at {root_path}: {exc.strerror}; choose a writable folder"
            ) from None
        existed = db_path.is_file() and db_path.stat().st_size > 0
        engine = db.make_engine(db_path)
        try:
            _bring_to_head(root_path, db_path, engine, existed)
            ws = cls(root_path, engine)
            ws._ensure_default_project()
        except SQLAlchemyError as exc:
            engine.dispose()
            reason = str(exc).splitlines()[0]
            raise WorkspaceError(
                f"cannot open the database {db_path}: {reason}; check it with a backup"
            ) from None
        except BaseException:
            engine.dispose()
            raise
        return ws

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # ---- paths ---------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def backups_dir(self) -> Path:
        return self.root / "backups"

    @property
    def yolo_config_dir(self) -> Path:
        """Folder to pass as ``YOLO_CONFIG_DIR`` so Ultralytics keeps its settings here."""
        return self.root / "yolo_config"

    @property
    def mlflow_db_path(self) -> Path:
        return self.root / MLFLOW_DB_NAME

    @property
    def mlflow_tracking_uri(self) -> str:
        """``sqlite:///<absolute path>/mlflow.db``."""
        return f"sqlite:///{self.mlflow_db_path}"

    def relative(self, path: Path | str) -> str:
        """How a path inside the workspace is stored: relative, so a restored backup still works."""
        path = Path(path)
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def resolve(self, stored: str) -> Path:
        """A stored path (relative to the workspace, or absolute) as an absolute path."""
        return self.root / stored

    @property
    def database_url(self) -> str:
        return db.sqlite_url(self.db_path)

    # ---- transactions --------------------------------------------------------------

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work commits when the block ends and rolls back on any exception.

        Example:
            >>> with ws.session() as s:
            ...     s.add(Project(name="field-trials"))
        """
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def default_project_id(self) -> int:
        """The id of the project named "default" (created on first open)."""
        with self.session() as s:
            pid = s.scalar(select(Project.id).where(Project.name == DEFAULT_PROJECT))
        if pid is None:
            raise NotFoundError(
                f"the workspace {self.root} has no default project; reopen it to recreate it"
            )
        return pid

    def _ensure_default_project(self) -> None:
        try:
            with self.session() as s:
                if s.scalar(select(Project.id).where(Project.name == DEFAULT_PROJECT)) is None:
                    s.add(Project(name=DEFAULT_PROJECT))
        except IntegrityError:
            pass  # another process opening the same workspace created it first

    # ---- maintenance ---------------------------------------------------------------

    def revision(self) -> str | None:
        """The alembic revision the database is at."""
        return db.current_revision(self.engine)

    def check(self) -> CheckReport:
        """Check the database and the blob store; see :class:`CheckReport`."""
        from desktop_app.core.workspace_check import run_check

        return run_check(self)

    def backup(self, dest_dir: Path | str) -> Path:
        """Write a consistent copy of the workspace into ``dest_dir`` (new or empty).

        The databases are copied with the sqlite3 backup API; ``blobs/``, ``runs/`` and
        ``exports/`` are copied as files. The copy is assembled in a temp folder and renamed
        into place, so ``dest_dir`` is either complete or absent.

        Returns:
            The backup folder, itself a workspace that :meth:`open` accepts.

        Raises:
            DestinationNotEmptyError: ``dest_dir`` exists and is not empty.
        """
        from desktop_app.core.workspace_backup import write_backup

        return write_backup(self, Path(dest_dir))


def _bring_to_head(root: Path, db_path: Path, engine: Engine, existed: bool) -> None:
    head = db.head_revision()
    current = db.current_revision(engine)
    if current == head:
        return
    if current is not None and current not in db.known_revisions():
        raise WorkspaceError(
            f"workspace {root} (schema {current}) was written by a newer Outpost; update Outpost"
        )
    if current is None and db.app_tables(engine):
        raise WorkspaceError(
            f"{db_path} is not an Outpost database (it has tables but no schema version); choose another --workspace"
        )
    if existed:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        db.sqlite_copy(db_path, root / "backups" / f"outpost-{stamp}-pre-{current or 'base'}.db")
    engine.dispose()  # no pooled connection may hold the file while the schema changes
    try:
        db.run_migration(db_path, "head")
    except WorkspaceError:
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        advice = (
            f"the old copy is in {root / 'backups'}; report the problem"
            if existed
            else "report the problem"
        )
        raise WorkspaceError(
            f"migrating {db_path} from {current or 'empty'} to {head} failed ({reason}); {advice}"
        ) from None
