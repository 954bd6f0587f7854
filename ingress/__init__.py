"""The ingress role: an SMTP server that admits mail by the client's policy and persists it
on the bus before it answers 250 (DESIGN.md, "The flow", step 1)."""
