"""Azure Storage: one account's clients, task file transfers, and the fast path for loopback accounts."""
