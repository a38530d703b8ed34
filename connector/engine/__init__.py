"""The sync engine: import, synchronization and export steps over connector spaces and a metaverse."""

from connector.engine._abandoned import (
    ENDED_UNRECORDED,
    abandoned_runs,
    ended_unrecorded,
    process_gone,
    shown_status,
    unrecorded_message,
)
from connector.engine._agents import (
    agent_schema,
    export_scope,
    load_metaverse_schema,
    open_connector,
    reauthorize_command,
    setting_paths,
    trust_problem,
)
from connector.engine._context import NullProgress, Progress, StepContext
from connector.engine._engine import Engine
from connector.engine._export import threshold_report
from connector.engine._results import (
    SHOWN_ERRORS,
    Interrupted,
    ObjectError,
    RunResult,
    StepResult,
    StepStopped,
    recorded_run_id,
)
from connector.engine._stream import MemoryState, Page, StreamPager, import_in_memory
from connector.engine._sync import search_fields

__all__ = [
    "ENDED_UNRECORDED",
    "SHOWN_ERRORS",
    "Engine",
    "Interrupted",
    "MemoryState",
    "NullProgress",
    "ObjectError",
    "Page",
    "Progress",
    "RunResult",
    "StepContext",
    "StepResult",
    "StepStopped",
    "StreamPager",
    "abandoned_runs",
    "agent_schema",
    "ended_unrecorded",
    "export_scope",
    "import_in_memory",
    "load_metaverse_schema",
    "open_connector",
    "process_gone",
    "reauthorize_command",
    "recorded_run_id",
    "search_fields",
    "setting_paths",
    "shown_status",
    "threshold_report",
    "trust_problem",
    "unrecorded_message",
]
