"""The contracts between podpost's roles: wire messages, resource specs and the bus layout.

Pure data only. Nothing in this package does I/O; `.importlinter` enforces it.
"""
