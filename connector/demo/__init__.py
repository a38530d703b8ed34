"""``mvsync demo``: the photo solution end to end on a machine with no tenant and no AD."""

from connector.demo._config import derive_config, dump_toml, emulator_exo_settings, load_sample, sample_path
from connector.demo._directory import DirectorySnapshotConnector, DirectorySnapshotSettings

__all__ = [
    "DirectorySnapshotConnector",
    "DirectorySnapshotSettings",
    "derive_config",
    "dump_toml",
    "emulator_exo_settings",
    "load_sample",
    "sample_path",
]
