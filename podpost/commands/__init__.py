"""The operator's commands (``caught``, ``dlq``, ``trace``, ``status``): their bodies, so
that ``podpost.cli`` only declares options. Each command connects once, reads or acts
through `podpost.inspecting`, `podpost.replaying` and `podpost.purging`, and prints
`podpost.tables` for people or the same `podpost.reports` Structs as JSON for scripts."""
