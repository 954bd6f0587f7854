"""Pure decisions of the reconciler: documents, matching, the snapshot build, inventory,
statuses, leases. No I/O; tested directly."""
