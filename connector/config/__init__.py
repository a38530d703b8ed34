"""Configuration loading (placeholder until the loader lands)."""


class ConfigError(Exception):
    """A configuration problem; the message names the key and the file."""
