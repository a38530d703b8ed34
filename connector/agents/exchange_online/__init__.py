"""The ``exchange-online-photos`` agent: Exchange Online mailbox users and photos over Microsoft Graph.

Registered under the ``mvsync.connectors`` entry point. See ``_connector`` for the import design,
``_auth`` for MSAL refresh-token authentication and ``_import`` for what the import lists, probes and stages.
"""

from connector.agents.exchange_online._auth import GraphAuth
from connector.agents.exchange_online._connector import OBJECT_CLASS, SCHEMA, ExchangeOnlinePhotosConnector
from connector.agents.exchange_online._graph import BATCH_PARALLELISM
from connector.agents.exchange_online._import import not_a_mailbox_user
from connector.agents.exchange_online._settings import ExchangeOnlineSettings
from connector.agents.exchange_online._tokencache import generate_key_file

__all__ = [
    "BATCH_PARALLELISM",
    "OBJECT_CLASS",
    "SCHEMA",
    "ExchangeOnlinePhotosConnector",
    "ExchangeOnlineSettings",
    "GraphAuth",
    "generate_key_file",
    "not_a_mailbox_user",
]
