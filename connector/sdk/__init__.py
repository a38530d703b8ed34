"""What a connector author imports: ``from connector.sdk import Connector, CSEntryChange, ...``."""

from connector.sdk._changes import (
    AttributeChange,
    AttributeModificationType,
    CSEntryChange,
    ImportEntryError,
    ObjectModificationType,
    Value,
    Values,
    person_display,
)
from connector.sdk._connector import (
    Capabilities,
    CheckResult,
    Connector,
    ConnectorContext,
    ConnectorSettings,
)
from connector.sdk._errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectorError,
    EntryError,
    ResumeRefusedError,
    ScopeViolationError,
    ServerDownError,
    StopRunError,
)
from connector.sdk._exports import ExportResult, ExportStatus
from connector.sdk._imports import ImportMode, ImportPage, ImportRequest, paginate_list
from connector.sdk._schema import (
    Attribute,
    AttributeAccess,
    AttributeType,
    ObjectClass,
    Schema,
    parse_psma_attribute,
    parse_psma_schema,
)
from connector.sdk._transforms import TransformError, TransformFactory, TransformFunction

__all__ = [
    "Attribute",
    "AttributeAccess",
    "AttributeChange",
    "AttributeModificationType",
    "AttributeType",
    "AuthenticationError",
    "CSEntryChange",
    "Capabilities",
    "CheckResult",
    "ConfigurationError",
    "Connector",
    "ConnectorContext",
    "ConnectorError",
    "ConnectorSettings",
    "EntryError",
    "ExportResult",
    "ExportStatus",
    "ImportEntryError",
    "ImportMode",
    "ImportPage",
    "ImportRequest",
    "ObjectClass",
    "ObjectModificationType",
    "ResumeRefusedError",
    "Schema",
    "ScopeViolationError",
    "ServerDownError",
    "StopRunError",
    "TransformError",
    "TransformFactory",
    "TransformFunction",
    "Value",
    "Values",
    "paginate_list",
    "parse_psma_attribute",
    "parse_psma_schema",
    "person_display",
]
