"""A campaign's results: per scenario and target, as a table for people and JSON for
machines (``--out``). Format 1:

.. code-block:: json

    {"format": 1, "ok": true, "run": "3f9a1c", "fleet": "hil-3f9a1c", "seconds": 41.2,
     "broker": {...}, "targets": [{"name": "pi-1", "kind": "ssh", "facts": {...}}],
     "scenarios": [{"name": "rollout", "ok": true, "seconds": 9.8, "figures": {...},
                    "targets": [{"name": "pi-1", "ok": true, "detail": "...",
                                 "figures": {...}}]}]}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "Report", "ScenarioResult", "TargetResult", "table"]

FORMAT = 1


@dataclass
class TargetResult:
    name: str
    ok: bool
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScenarioResult:
    name: str
    ok: bool
    seconds: float
    summary: str
    targets: list[TargetResult] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    run: str
    fleet: str
    broker: dict[str, Any]
    targets: list[dict[str, Any]]
    scenarios: list[ScenarioResult] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None  # the campaign could not run to its end

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.scenarios) and all(s.ok for s in self.scenarios)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "ok": self.ok, **asdict(self)}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")


def table(report: Report) -> str:
    """Scenario x target, with each target's detail, then one line per scenario."""
    kinds = {t["name"]: t["kind"] for t in report.targets}
    rows = [("scenario", "target", "kind", "result", "detail")]
    for s in report.scenarios:
        for t in s.targets:
            rows.append(
                (s.name, t.name, kinds.get(t.name, "?"), "ok" if t.ok else "FAIL", t.detail)
            )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    lines.append("")
    for s in report.scenarios:
        lines.append(f"{s.name}: {'ok' if s.ok else 'FAILED'} in {s.seconds:.1f} s: {s.summary}")
    if report.error:
        lines.append(f"campaign stopped: {report.error}")
    lines.append(f"campaign {'passed' if report.ok else 'FAILED'} in {report.seconds:.1f} s")
    return "\n".join(lines)
