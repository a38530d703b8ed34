"""Store (placeholder until the store lands)."""


class LockHeldError(Exception):
    """Another process holds a lock this run needs."""
