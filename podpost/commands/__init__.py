"""The operator's commands (``caught``, ``dlq``, ``trace``, ``status``): their bodies, so
that ``podpost.cli`` only declares options. Each command connects once, reads or acts
through `admin.inspecting`, `runtime.mailstore` and `runtime.requeueing`, and prints
`podpost.tables` for people or the same `admin.rules` Structs as JSON for scripts."""
