"""The operator's tools as a role: read and act on what the bus holds (dead letters,
caught mail, events, status). The command prints what these return."""
