"""The Redis side: keyevent notifications heard, deadlines kept in a ledger, and every
expiry queued as a durable job, all under expiryd's own key prefix."""
