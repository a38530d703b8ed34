"""``mvsync demo``: the photo solution end to end on a machine with no tenant and no AD.

Besides the demo itself this publishes what the benchmarks and the test harness build their worlds
with: the sample configuration and its secrets, the LDIF directory snapshot and the EWS emulator with
the tenant's on-premises mailboxes. ``connector.demo.ad`` populates a real directory (``AD_*``, Samba).
"""

from connector.demo._config import (
    AD_SNAPSHOT_TYPE,
    EMULATOR_DOWN,
    derive_config,
    dump_toml,
    emulator_down_hint,
    emulator_exo_settings,
    load_sample,
    load_sample_document,
    sample_path,
    uses_stopped_emulator,
    write_secret,
)
from connector.demo._directory import DirectorySnapshotConnector, DirectorySnapshotSettings, read_ldif, write_ldif
from connector.demo._run import (
    DEMO_SCOPES,
    Scenario,
    prepare_dir,
    prepare_scenario,
    run_demo,
    step_summary,
    work_done,
)
from connector.demo._world import SharedNames, start_ews

__all__ = [
    "AD_SNAPSHOT_TYPE",
    "DEMO_SCOPES",
    "EMULATOR_DOWN",
    "DirectorySnapshotConnector",
    "DirectorySnapshotSettings",
    "Scenario",
    "SharedNames",
    "derive_config",
    "dump_toml",
    "emulator_down_hint",
    "emulator_exo_settings",
    "load_sample",
    "load_sample_document",
    "prepare_dir",
    "prepare_scenario",
    "read_ldif",
    "run_demo",
    "sample_path",
    "start_ews",
    "step_summary",
    "uses_stopped_emulator",
    "work_done",
    "write_ldif",
    "write_secret",
]
