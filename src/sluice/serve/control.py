"""A small client for a running server's experiment and route endpoints (stdlib HTTP only).

``sluice routes`` and ``sluice ab report`` are thin layers over :class:`ControlClient`; the
same calls work from a notebook::

    client = ControlClient("http://127.0.0.1:8000", token="…")
    client.set_routes("demo", weights={"1": 90, "2": 10}, shadow={"3": 0.2})
    print(experiment_report(client.experiment("demo")).recommendation)  # sluice.serve.abreport
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from sluice.errors import RemoteError

__all__ = ["ControlClient"]


class ControlClient:
    """Calls ``/v2/models/{m}/routes…`` and ``/experiment`` on the server at ``url``."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"
        self.token = token
        self.timeout_s = timeout_s

    def experiment(self, model: str) -> dict[str, Any]:
        """The experiment's figures: weights, per-version counts, outcomes, shadows, rollbacks."""
        return self._call("GET", f"/v2/models/{model}/experiment")

    def routes(self, model: str) -> dict[str, Any]:
        """The routing section and labels the server loaded, and the live weights."""
        return self._call("GET", f"/v2/models/{model}/routes")

    def set_routes(
        self,
        model: str,
        *,
        weights: Mapping[str, float] | None = None,
        shadow: Mapping[str, float] | None = None,
        sticky_key: str | None = None,
        mode: str | None = None,
    ) -> dict[str, Any]:
        """Change the routing; the server persists it to model.yaml and applies it without a restart."""
        change = {"weights": weights, "shadow": shadow, "sticky_key": sticky_key, "mode": mode}
        return self._call("POST", f"/v2/models/{model}/routes", {k: v for k, v in change.items() if v is not None})

    def promote(self, model: str, variant: str | None = None) -> dict[str, Any]:
        """Label ``variant`` (default: the only candidate) stable and send it all traffic."""
        return self._call("POST", f"/v2/models/{model}/routes/promote", {"variant": variant} if variant else {})

    def rollback(self, model: str) -> dict[str, Any]:
        """Send all traffic back to the primary variant."""
        return self._call("POST", f"/v2/models/{model}/routes/rollback", {})

    def feedback(self, model: str, outcome: Mapping[str, Any]) -> dict[str, Any]:
        """Send one outcome: ``{"id": …, "reward": …}`` or ``{"routing_key": …, "label": …}``."""
        return self._call("POST", f"/v2/models/{model}/feedback", dict(outcome))

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            error = RemoteError(f"{method} {self.url}{path} answered {exc.code}: {_message(exc.read())}")
            if 400 <= exc.code < 500:  # the server refused what was asked: a usage error, as a local check is
                error.exit_code = 2
            raise error from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach the server at {self.url}: {reason}") from None


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip() or "(no body)"
