"""The web console: caught mail per namespace, the queue and dead letters, with actions."""
