"""mfcd: a multicast routing controller for Linux (the daemon mfcd and its client mfcctl)."""

# A plain constant, so `--version` costs no import of importlib.metadata.
__version__ = "0.1.0"
