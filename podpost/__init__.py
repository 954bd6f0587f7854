"""podpost: the command line and the small runtime the roles share (bus, logs, settings)."""

__version__ = "0.1.0"
