"""A small client of the Kafka Connect REST API, on the standard library.

Every failure becomes a `KafkaConnectError` whose message names the worker's URL (credentials
in the URL are sent as basic auth, never shown) and has the connectors' secrets scrubbed out:
Connect's error messages may quote the configuration they reject.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from tunggal.errors import KafkaConnectError

log = logging.getLogger(__name__)

MASK = "********"


class ConnectClient:
    def __init__(self, url: str, *, timeout_s: float = 30, secrets: Iterable[str] = ()) -> None:
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise KafkaConnectError(
                f"{url!r} is not a Kafka Connect URL: expected http(s)://host:port"
            )
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        self.url = urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
        self._auth: str | None = None
        if parts.username is not None:
            pair = f"{urllib.parse.unquote(parts.username)}:"
            pair += urllib.parse.unquote(parts.password or "")
            self._auth = "Basic " + base64.b64encode(pair.encode()).decode()
        self.timeout_s = timeout_s
        self._secrets = {s for s in secrets if s}
        if parts.password:
            self._secrets.add(parts.password)

    def add_secrets(self, values: Iterable[str]) -> None:
        """Values to scrub from every error message (the passwords of configs we send)."""
        self._secrets.update(v for v in values if v)

    def scrub(self, text: str) -> str:
        # Longest first, so a secret that contains another is replaced whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text

    # -- the REST API ----------------------------------------------------------------------------

    def server_info(self) -> dict[str, Any]:
        return dict(self._request("GET", "/"))

    def validate(self, connector_class: str, config: Mapping[str, str]) -> list[tuple[str, str]]:
        """(field, message) for each problem Connect (and the connector itself) finds."""
        answer = self._request(
            "PUT", f"/connector-plugins/{_seg(connector_class)}/config/validate", dict(config)
        )
        return [
            (entry["value"]["name"], self.scrub(message))
            for entry in answer.get("configs", [])
            for message in entry["value"].get("errors", [])
        ]

    def get_config(self, name: str) -> dict[str, str] | None:
        """The connector's configuration as stored by Connect, or None if there is none."""
        answer = self._request("GET", f"/connectors/{_seg(name)}/config", missing_ok=True)
        return None if answer is None else {str(k): str(v) for k, v in answer.items()}

    def put_config(self, name: str, config: Mapping[str, str]) -> bool:
        """Create or update the connector; True when it was created."""
        status, _ = self._exchange("PUT", f"/connectors/{_seg(name)}/config", dict(config))
        return status == 201

    def task_configs(self, name: str) -> list[dict[str, str]]:
        """The configurations the connector's tasks run with (they follow a new connector
        configuration once Connect has restarted them)."""
        answer = self._request("GET", f"/connectors/{_seg(name)}/tasks", unknown=name)
        return [
            {str(k): str(v) for k, v in task.get("config", {}).items()}
            for task in answer
            if isinstance(task, dict)
        ]

    def connectors(self) -> list[str]:
        return [str(n) for n in self._request("GET", "/connectors")]

    def configs(self) -> dict[str, dict[str, str]]:
        """Every connector on the worker, name -> its stored configuration, in one request."""
        answer = self._request("GET", "/connectors?expand=info")
        return {
            str(name): {str(k): str(v) for k, v in entry["info"]["config"].items()}
            for name, entry in answer.items()
        }

    def delete(self, name: str) -> None:
        self._request("DELETE", f"/connectors/{_seg(name)}", unknown=name)

    def status(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/connectors/{_seg(name)}/status", unknown=name))

    def restart(self, name: str, *, include_tasks: bool) -> None:
        query = "?includeTasks=true" if include_tasks else ""
        self._request("POST", f"/connectors/{_seg(name)}/restart{query}", unknown=name)

    def pause(self, name: str) -> None:
        self._request("PUT", f"/connectors/{_seg(name)}/pause", unknown=name)

    def resume(self, name: str) -> None:
        self._request("PUT", f"/connectors/{_seg(name)}/resume", unknown=name)

    # -- transport -------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        missing_ok: bool = False,
        unknown: str | None = None,
    ) -> Any:
        return self._exchange(method, path, body, missing_ok=missing_ok, unknown=unknown)[1]

    def _exchange(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        missing_ok: bool = False,
        unknown: str | None = None,
    ) -> tuple[int, Any]:
        """(HTTP status, decoded JSON answer); 404 gives (404, None) with missing_ok, and
        "no connector named ..." with unknown=name."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._auth is not None:
            request.add_header("Authorization", self._auth)
        # Only the method and path: bodies hold passwords.
        log.debug("%s %s%s", method, self.url, path)
        what = f"{method} {path.split('?')[0]}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return 404, None
            if exc.code == 404 and unknown is not None:
                raise KafkaConnectError(
                    f"Kafka Connect at {self.url} has no connector named {unknown!r}", status=404
                ) from None
            raise KafkaConnectError(
                f"Kafka Connect at {self.url}: {what} failed with HTTP {exc.code}: "
                f"{self.scrub(_error_message(exc))}",
                status=exc.code,
            ) from None
        except TimeoutError:
            raise KafkaConnectError(
                f"Kafka Connect at {self.url} did not answer {what} within {self.timeout_s:g} s"
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ConnectionRefusedError):
                text = "refused the connection (is the worker running, is the port right?)"
            elif isinstance(reason, TimeoutError):
                text = f"did not answer {what} within {self.timeout_s:g} s"
            else:
                text = f"cannot be reached: {self.scrub(str(reason))}"
            raise KafkaConnectError(f"Kafka Connect at {self.url} {text}") from None
        except json.JSONDecodeError:
            raise KafkaConnectError(
                f"Kafka Connect at {self.url}: {what} answered something that is not JSON; "
                "is this the Connect REST port?"
            ) from None


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _error_message(exc: urllib.error.HTTPError) -> str:
    """Connect answers errors as {"error_code": ..., "message": ...}; anything else verbatim."""
    try:
        raw = exc.read().decode(errors="replace")
    except OSError:
        return exc.reason if isinstance(exc.reason, str) else str(exc)
    try:
        body = json.loads(raw)
    except json.JSONDecodeError:
        return raw.strip()[:500] or str(exc.reason)
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return raw.strip()[:500]
