"""Outpost on the workstation: the core (domain and storage), the CLI, and the Qt app."""
