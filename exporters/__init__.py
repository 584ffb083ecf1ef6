"""Checkpoint → edge format plugins, their capability records, and the package builder."""
