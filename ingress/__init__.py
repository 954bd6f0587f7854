"""The ingress role: an SMTP server that admits mail by the client's policy and persists it
on the bus before it answers 250 (docs/architecture.md, "One mail's trip", steps 1-4)."""
