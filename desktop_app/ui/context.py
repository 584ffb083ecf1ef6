"""What every Studio page shares: the open workspace, background work and error dialogs.

Pages never block the window: anything that touches the disk, the database of a large
dataset, a device or a model runs through :meth:`StudioContext.run`, on the context's thread
pool, and comes back to the UI thread through Qt signals. Long work (training, export)
runs as a job child process through ``desktop_app.core.jobs``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtWidgets import QMessageBox, QWidget

from desktop_app.core.workspace import Workspace
from desktop_app.ui.settings import StudioSettings
from runtimes.errors import OutpostError


def error_text(exc: BaseException) -> str:
    """The one line a dialog shows: typed errors carry a message that says what to do."""
    if isinstance(exc, OutpostError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class _Signals(QObject):
    done = Signal(object)
    failed = Signal(object)


class Task(QRunnable):
    """One function run on the pool; its result or exception comes back as a signal."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.signals = _Signals()
        self.setAutoDelete(False)

    def run(self) -> None:
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the UI as a dialog
            exc.__traceback_text__ = traceback.format_exc()  # type: ignore[attr-defined]
            self.signals.failed.emit(exc)
        else:
            self.signals.done.emit(result)


class StudioContext(QObject):
    """The open workspace and the services pages use.

    Signals:
        workspace_changed: a different workspace was opened (pages reload everything).
        changed(str): something in the workspace changed; the topic is one of
            ``"datasets"``, ``"runs"``, ``"jobs"``, ``"exports"``, ``"devices"``,
            ``"experiments"`` (pages refresh what shows that topic).
        busy(int): number of background tasks in flight (for a status-bar spinner).
    """

    workspace_changed = Signal()
    changed = Signal(str)
    busy = Signal(int)

    def __init__(self, workspace: Workspace, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.pool = QThreadPool(self)
        self._tasks: set[Task] = set()
        self.last_error: str | None = None
        # the Studio's settings (discovery interfaces, device defaults); see ui/settings.py
        self.settings = StudioSettings()

    @property
    def root(self) -> Path:
        """The workspace folder."""
        return self.workspace.root

    def open_workspace(self, root: Path | str) -> None:
        """Close the current workspace and open (creating if needed) another one."""
        new = Workspace.open(root)
        old, self.workspace = self.workspace, new
        old.close()
        self.workspace_changed.emit()

    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        **kwargs: Any,
    ) -> Task:
        """Run ``fn(*args, **kwargs)`` on the pool; callbacks run on the UI thread.

        Without ``on_error``, a failure shows an error dialog.
        """
        task = Task(fn, *args, **kwargs)
        self._tasks.add(task)
        self.busy.emit(len(self._tasks))

        def finish() -> None:
            self._tasks.discard(task)
            self.busy.emit(len(self._tasks))

        def done(result: Any) -> None:
            finish()
            if on_done is not None:
                on_done(result)

        def failed(exc: BaseException) -> None:
            finish()
            if on_error is not None:
                on_error(exc)
            else:
                self.show_error(exc)

        task.signals.done.connect(done)
        task.signals.failed.connect(failed)
        self.pool.start(task)
        return task

    def wait(self, msecs: int = 30_000) -> bool:
        """Block until the pool is idle (tests and shutdown only)."""
        return bool(self.pool.waitForDone(msecs))

    def show_error(self, exc: BaseException, parent: QWidget | None = None) -> None:
        """A modal dialog with the one-line message; details hold the traceback if any."""
        box = QMessageBox(parent)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Outpost Studio")
        box.setText(error_text(exc))
        details = getattr(exc, "__traceback_text__", None)
        if details and not isinstance(exc, OutpostError):
            box.setDetailedText(details)
        self.last_error = error_text(exc)
        box.open()
