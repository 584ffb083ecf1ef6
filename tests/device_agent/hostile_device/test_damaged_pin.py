"""A damaged pin in the workspace: the device can still be forgotten, and says how."""

from __future__ import annotations

import pytest

from desktop_app.cli import main as outpost
from desktop_app.core import devices
from desktop_app.core.models import Device
from desktop_app.core.workspace import Workspace


def test_a_device_with_a_damaged_pin_can_still_be_forgotten(
    ws: Workspace, capfd: pytest.CaptureFixture[str]
) -> None:
    with ws.session() as s:
        s.add(
            Device(
                id="a" * 16,
                name="pi",
                host="127.0.0.1",
                port=9,
                info={devices.PIN_KEY: "not base64!!", "paired_at": "2026-01-01"},
            )
        )
    """A pin that is not one trusts nothing: a command that needs it says what to do, and
    ``devices forget`` (which promises to forget here whatever the device says) forgets it."""
    code = outpost(["devices", "show", "a" * 16, "--workspace", str(ws.root)])
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert (
        f"is damaged (the pinned key is not valid base64); run outpost devices forget {'a' * 16}"
        in err
    )
    code = outpost(["devices", "forget", "a" * 16, "--workspace", str(ws.root)])
    err = capfd.readouterr().err
    assert code == 0, err
    assert "forgotten here only" in err
    assert devices.PIN_KEY not in devices.get_device(ws, "a" * 16).info
