"""Request counters, so tests and benchmarks can assert what the client actually sent."""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["Stats"]


class Stats:
    """Counters updated on the event loop; ``snapshot()`` copies them for other threads."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()  # Graph responses, $batch items included
        self.http_by_status: Counter[str] = Counter()  # every HTTP response on the wire
        self.faults: Counter[str] = Counter()
        self.throttled_by_scope: Counter[str] = Counter()

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: self.counters.get(name, 0)
            for name in (
                "requests",
                "graph_requests",
                "photo_requests",
                "photo_bytes",
                "photo_downloads",
                "batch_requests",
                "batch_items",
                "token_requests",
                "admin_requests",
                "throttled",
                "faults_injected",
            )
        }
        out.update({k: v for k, v in self.counters.items() if k not in out})
        out["by_status"] = dict(self.by_status)
        out["http_by_status"] = dict(self.http_by_status)
        out["faults"] = dict(self.faults)
        out["throttled_by_scope"] = dict(self.throttled_by_scope)
        return out
