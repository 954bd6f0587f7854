"""The runtime every role shares: settings, the bus connection and its reads, logs,
metrics, health, the snapshot holder. Below the roles, above the contracts."""
