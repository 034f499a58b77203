"""Hydra configs of the ``mirage`` command (one YAML per sub-command)."""
