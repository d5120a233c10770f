"""After an evaluation: which model to export and whether to promote it.

The rule the flows follow (issue 7):
- the decision says promote: export the winner and make it the champion;
- the registry has no champion yet (first deployment): export the evaluation's champion (the
  best baseline, or the model the registry named) and promote it, so the server has something
  to serve;
- otherwise nothing is exported and artifacts/champion.json is left exactly as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.registry import read_champion


def release_plan(decision: dict[str, Any], artifacts_dir: str | Path) -> dict[str, Any]:
    """{"model": name or None, "promote": bool, "reason": text} for a decision.json."""
    verdict = decision["verdict"]
    if verdict["promote"]:
        return {"model": verdict["model"], "promote": True, "reason": verdict["reason"]}
    current = read_champion(artifacts_dir)
    if current is None:
        name = decision["champion"]
        reason = (
            f"first deployment: {name} is the evaluation's champion "
            f"({decision.get('champion_source', 'best baseline')}); {verdict['reason']}"
        )
        return {"model": name, "promote": True, "reason": reason}
    return {
        "model": None,
        "promote": False,
        "reason": f"{current['model']}/{current['version']} stays champion: {verdict['reason']}",
    }
