"""mvsync: a MIM / PowerShell-MA style identity sync engine. The SDK lives in ``connector.sdk``."""

from connector._version import __version__

__all__ = ["__version__"]
