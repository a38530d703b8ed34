"""``mvsync demo``: the photo solution end to end on a machine with no tenant and no AD."""

from connector.demo._config import derive_config, dump_toml, emulator_exo_settings, load_sample, sample_path
from connector.demo._directory import DirectorySnapshotConnector, DirectorySnapshotSettings
from connector.demo._run import Scenario, prepare_dir, prepare_scenario, run_demo, step_summary, work_done

__all__ = [
    "DirectorySnapshotConnector",
    "DirectorySnapshotSettings",
    "Scenario",
    "derive_config",
    "dump_toml",
    "emulator_exo_settings",
    "load_sample",
    "prepare_dir",
    "prepare_scenario",
    "run_demo",
    "sample_path",
    "step_summary",
    "work_done",
]
