"""Pure decisions of the dispatcher: classify, backoff, the rate limit, the recipient
ledger, outcomes. No I/O; tested directly."""
