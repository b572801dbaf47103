"""`scripts/bench`: expiryd against a naive subscriber and the database's own ceiling, on
throwaway servers, all measured in one run. See `python -m bench --help`."""
