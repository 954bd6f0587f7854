"""Pure decisions of the ingress: routes, admission, senders, headers, mail ids, replies,
the DATA phase. No I/O; tested directly."""
