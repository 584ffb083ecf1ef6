"""Outpost Studio: PySide6 views over ``desktop_app.core`` (no domain logic here)."""
