"""The edge contract: package format, runtime backends, pre/post-processing.

Light to install (numpy, OpenCV, pydantic, plus the runtime a device has) and free of
torch, so a device agent can depend on it alone.
"""

__version__ = "0.1.0"
