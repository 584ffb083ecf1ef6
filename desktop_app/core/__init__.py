"""Domain and storage of the desktop side. No Qt here: views live in ``desktop_app.ui``."""
