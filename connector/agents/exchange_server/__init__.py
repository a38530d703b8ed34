"""``exchange-server-photos``: photos of on-premises Exchange mailboxes over EWS (hybrid tenants)."""

from connector.agents.exchange_server._connector import OBJECT_CLASS, ExchangeServerPhotosConnector
from connector.agents.exchange_server._settings import ExchangeServerSettings

__all__ = ["OBJECT_CLASS", "ExchangeServerPhotosConnector", "ExchangeServerSettings"]
