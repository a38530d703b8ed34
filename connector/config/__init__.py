"""Configuration: ``mvsync.toml`` models and the loader."""

from connector.config._hints import did_you_mean
from connector.config._loader import (
    ConfigError,
    config_from_dict,
    format_validation_error,
    load_config,
    resolve_refs,
    secret_fields,
    validate_settings,
)
from connector.config._models import (
    AgentConfig,
    DeletionThreshold,
    Deprovision,
    ExportFlow,
    ImportFlow,
    JoinCondition,
    JoinRule,
    MetaverseConfig,
    MvsyncConfig,
    ProjectionRule,
    RunProfileConfig,
    RunStepConfig,
    RunStepKind,
    StoreConfig,
)

__all__ = [
    "AgentConfig",
    "ConfigError",
    "DeletionThreshold",
    "Deprovision",
    "ExportFlow",
    "ImportFlow",
    "JoinCondition",
    "JoinRule",
    "MetaverseConfig",
    "MvsyncConfig",
    "ProjectionRule",
    "RunProfileConfig",
    "RunStepConfig",
    "RunStepKind",
    "StoreConfig",
    "config_from_dict",
    "did_you_mean",
    "format_validation_error",
    "load_config",
    "resolve_refs",
    "secret_fields",
    "validate_settings",
]
