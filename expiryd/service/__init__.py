"""The service shell: the `expiryd` command, the daemon's threads, and what an operator
uses to check on it."""
