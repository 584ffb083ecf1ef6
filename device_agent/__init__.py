"""The device agent ``outpost-agent``: serves installed packages over HTTP, advertised by mDNS.

Imports only ``runtimes`` of our packages, so a device installs the edge contract, its
runtime and this daemon, and nothing of the desktop side.
"""

from device_agent.protocol_version import PROTOCOL as PROTOCOL_VERSION
from device_agent.protocol_version import package_version

__version__ = package_version()  # the installed distribution's (pyproject's) version
SERVICE_TYPE = "_outpost._tcp.local."
DEFAULT_PORT = 8765  # the agent's TCP port unless `outpost-agent serve --port` says otherwise

__all__ = ["DEFAULT_PORT", "PROTOCOL_VERSION", "SERVICE_TYPE", "__version__"]
