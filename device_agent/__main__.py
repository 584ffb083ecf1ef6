"""``python -m device_agent serve ...`` runs the same CLI as ``outpost-agent``."""

from device_agent.cli import main

raise SystemExit(main())
