"""Reading the comparator: recent disagreements and the agreement, as plain data (for the console
and scripts). Locally, the stack's state file names the comparator's loopback URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from ..errors import ServingError


def disagreements(url: str, limit: int = 20, timeout: float = 5) -> dict[str, Any]:
    """GET <url>/disagreements: {"agreement": [{deployment, shadow, rowsCompared, rowsAgreed,
    agreementRate}], "disagreements": [{time, deployment, shadow, primary, requestId, matchedBy,
    row, input, primaryAnswer, shadowAnswer, detail}, ...]} (newest first)."""
    try:
        resp = httpx.get(url.rstrip("/") + "/disagreements", params={"limit": limit},
                         timeout=timeout)
        resp.raise_for_status()
        return dict(resp.json())
    except (httpx.HTTPError, ValueError) as e:
        raise ServingError(f"cannot read the comparator at {url}: {e}") from e


def local_disagreements(state_dir: Path, limit: int = 20) -> dict[str, Any]:
    """The local stack's (`serving up --state-dir`): its comparator's URL is in stack.json."""
    from ..router.stack import read_state

    url = read_state(state_dir).get("comparatorUrl")
    if not url:
        raise ServingError(f"the stack in {state_dir} runs no comparator (started before it "
                           "existed? restart it with 'serving down' and 'serving up')")
    return disagreements(str(url), limit)
