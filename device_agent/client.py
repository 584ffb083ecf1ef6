"""A small typed HTTP client for the agent API v1 (used by the desktop CLI and GUI).

Example:
    >>> client = AgentClient("http://192.168.1.20:8765")  # doctest: +SKIP
    >>> client.upload_package(Path("shapes.outpost.zip"))["version"]  # doctest: +SKIP
    '1'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from device_agent.errors import AgentRejectedError, AgentUnreachableError, one_line
from runtimes.errors import PackageError

__all__ = ["AgentClient", "AgentRejectedError", "AgentUnreachableError"]

UPLOAD_TIMEOUT_S = 600.0  # big packages, slow links, plus model loading on the device


class AgentClient:
    """Synchronous client for one agent. Use as a context manager, or call :meth:`close`."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/v1/info")

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/v1/stats")

    def upload_package(self, path: Path, *, timeout: float | None = None) -> dict[str, Any]:
        """Install a ``.outpost.zip`` on the agent; returns the installed model's description."""
        path = Path(path)
        try:
            fh = open(path, "rb")  # httpx streams an open file and sends its length
        except OSError as exc:
            raise PackageError(
                f"cannot read {path}: {exc.strerror}; check the package path"
            ) from None
        with fh:
            return self._request(
                "PUT",
                "/v1/packages",
                content=fh,
                headers={"Content-Type": "application/zip"},
                timeout=timeout or max(self.timeout, UPLOAD_TIMEOUT_S),
            )

    def infer(
        self,
        image_bytes: bytes,
        model: str | None = None,
        conf: float | None = None,
        iou: float | None = None,
    ) -> dict[str, Any]:
        """Run one encoded image (JPEG/PNG bytes) through a model on the agent."""
        params = {
            k: str(v) for k, v in (("model", model), ("conf", conf), ("iou", iou)) if v is not None
        }
        return self._request(
            "POST",
            "/v1/infer",
            content=image_bytes,
            params=params,
            headers={"Content-Type": "application/octet-stream"},
        )

    def rollback(self, model: str) -> dict[str, Any]:
        """Make the previous version of ``model`` active again."""
        return self._request("POST", f"/v1/models/{quote(model, safe='')}/rollback")

    def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        url = self.base_url + path
        try:
            response = self._http.request(method, path, timeout=timeout or self.timeout, **kwargs)
        except httpx.TransportError as exc:
            raise AgentUnreachableError(
                f"cannot reach agent at {url}: {one_line(exc) or type(exc).__name__}; "
                "check that outpost-agent is running and the address is right"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else None
            raise AgentRejectedError(
                response.status_code, one_line(message or response.text or response.reason_phrase)
            )
        if not isinstance(body, dict):
            raise AgentRejectedError(
                response.status_code,
                f"{url} did not answer with a JSON object; is this an outpost-agent?",
            )
        return body
