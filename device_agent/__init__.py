"""The device agent ``outpost-agent``: serves installed packages over HTTP, advertised by mDNS.

Imports only ``runtimes`` of our packages, so a device installs the edge contract, its
runtime and this daemon, and nothing of the desktop side.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
SERVICE_TYPE = "_outpost._tcp.local."

__all__ = ["PROTOCOL_VERSION", "SERVICE_TYPE", "__version__"]
