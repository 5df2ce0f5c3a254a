"""The lab's alert receiver: an Alertmanager webhook that shows every notification it gets.

Usage: ``python -m hvs_alert_receiver`` (the Compose service ``alert-receiver``). A package of
its own, apart from the API's: importing it loads no Flask, numpy or MLflow.

- ``POST /alerts/<route>``: Alertmanager's webhook; each alert in the notification is kept
  (the newest ``ALERT_RECEIVER_KEEP``) and logged to stdout as one JSON line.
- ``POST /alerts/heartbeat``: the Watchdog's heartbeat route. Its notifications are not listed
  with the alerts (a heartbeat is neither a page nor a ticket): only when the last one came.
- ``GET /``: the heartbeat's state, then the notifications as an HTML table, newest first,
  with links to the runbook.
- ``GET /alerts``: the notifications as JSON. ``GET /heartbeat``: the heartbeat's state as
  JSON. ``GET /runbook``: prometheus/runbook.md as HTML (``RUNBOOK_PATH``), which the alerts'
  ``runbook_url`` annotations point to.
- ``GET /health``: 200.

It uses only the standard library and ``markdown``, and keeps everything in memory: the list
starts empty when the receiver restarts, while ``docker compose logs alert-receiver`` keeps
the JSON lines.
"""

import html
import json
import logging
import re
import sys
import threading
import urllib.parse
from collections import deque
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import markdown
from hvs_settings import ReceiverSettings

log = logging.getLogger(__name__)

# Alertmanager sends small notifications; anything bigger is not one of them.
MAX_BODY_BYTES = 1024 * 1024
ROUTE = re.compile(r"^/alerts/([A-Za-z0-9_-]{1,40})$")
# The route alertmanager.yml sends the Watchdog to.
HEARTBEAT_ROUTE = "heartbeat"
# HEARTBEAT_MAX_SILENCE_SECONDS's default (hvs_settings says why 150 s).
HEARTBEAT_MAX_SILENCE_SECONDS = ReceiverSettings().heartbeat_max_silence_seconds


class AlertLog:
    """The newest alerts received, safe to share between request threads."""

    def __init__(self, keep: int):
        self._alerts: deque[dict] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, route: str, notification: dict) -> list[dict]:
        received = datetime.now(UTC).isoformat(timespec="seconds")
        entries = []
        for alert in notification.get("alerts", []):
            labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
            entries.append(
                {
                    "received_at": received,
                    "route": route,
                    "receiver": notification.get("receiver", ""),
                    "status": alert.get("status", notification.get("status", "")),
                    "alertname": labels.get("alertname", ""),
                    "severity": labels.get("severity", ""),
                    "labels": labels,
                    "summary": annotations.get("summary", ""),
                    "description": annotations.get("description", ""),
                    "runbook_url": annotations.get("runbook_url", ""),
                    # Where to look: the alert's expression in Prometheus, and a silence for
                    # exactly these labels in Alertmanager, both at their external URLs.
                    "generator_url": alert.get("generatorURL", ""),
                    "silence_url": silence_link(notification.get("externalURL", ""), labels),
                    "starts_at": alert.get("startsAt", ""),
                    "ends_at": alert.get("endsAt", ""),
                }
            )
        with self._lock:
            self._alerts.extend(entries)
        return entries

    def newest_first(self) -> list[dict]:
        with self._lock:
            return list(reversed(self._alerts))


class Heartbeat:
    """When the Watchdog last arrived, and whether it is overdue; safe to share between threads.

    The state is ``ok`` while the last heartbeat is at most ``max_silence`` seconds old;
    ``missing`` when it is older, when the last one said *resolved* (Alertmanager stopped
    hearing from Prometheus), or when none came within ``max_silence`` of the receiver's start;
    ``waiting`` before that.
    """

    def __init__(self, max_silence: float, started: datetime | None = None):
        self.max_silence = max_silence
        self._started = started or datetime.now(UTC)
        self._last: datetime | None = None
        self._last_status = ""
        self._received = 0
        self._alertnames: set[str] = set()
        self._lock = threading.Lock()

    def add(self, notification: dict, now: datetime | None = None) -> None:
        alerts = notification.get("alerts", [])
        with self._lock:
            self._last = now or datetime.now(UTC)
            self._last_status = notification.get("status", "")
            self._received += 1
            self._alertnames.update(str(a.get("labels", {}).get("alertname", "")) for a in alerts)

    def state(self, now: datetime | None = None) -> dict:
        now = now or datetime.now(UTC)
        with self._lock:
            last, status, received, names = self._last, self._last_status, self._received, sorted(self._alertnames)
        silent = (now - (last or self._started)).total_seconds()
        if status == "resolved" or silent > self.max_silence:
            state = "missing"
        else:
            state = "ok" if last else "waiting"
        return {
            "state": state,
            "last_received_at": last.isoformat(timespec="seconds") if last else None,
            "last_status": status,
            "seconds_since": round(silent),
            "max_silence_seconds": self.max_silence,
            "received": received,
            "alertnames": names,
        }


def render_heartbeat(state: dict) -> str:
    """The heartbeat's line at the top of the page."""
    limit = f"missing after {state['max_silence_seconds']:g} s without one"
    if state["state"] == "ok":
        text = f"Heartbeat ok: last at {state['last_received_at']} UTC, {state['seconds_since']} s ago ({limit})."
    elif state["state"] == "waiting":
        text = f"Waiting for the first heartbeat ({limit})."
    elif state["last_status"] == "resolved":
        text = f"Heartbeat missing: the Watchdog was resolved at {state['last_received_at']} UTC."
    elif state["last_received_at"]:
        text = f"Heartbeat missing: the last came at {state['last_received_at']} UTC, {state['seconds_since']} s ago."
    else:
        text = f"Heartbeat missing: none in the {state['seconds_since']} s since the receiver started."
    return (
        f"<p id='heartbeat' class='heartbeat-{state['state']}'>{html.escape(text)} "
        "<a href='/runbook#watchdog'>runbook</a> · <a href='/heartbeat'>JSON</a></p>"
    )


def _page(title: str, body: str, refresh: bool = False) -> bytes:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        + ("<meta http-equiv='refresh' content='15'>" if refresh else "")
        + f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        ".firing{color:#b00}.resolved{color:#070}.heartbeat-ok{color:#070}"
        ".heartbeat-missing{color:#fff;background:#b00;padding:4px 8px;font-weight:bold}</style></head><body>"
        f"{body}</body></html>"
    ).encode()


def runbook_link(url: str) -> str:
    """The link to a runbook section from this page: our own copy when the URL names /runbook.

    The rules' absolute runbook URLs assume the receiver's default port; its own page links
    its own /runbook, so that the link works wherever the receiver is published.
    """
    parts = urllib.parse.urlsplit(url)
    return f"/runbook#{parts.fragment}" if parts.path == "/runbook" else url


def silence_link(alertmanager_url: str, labels: dict) -> str:
    """Alertmanager's new-silence page with the alert's labels as its matchers ("" without a URL)."""
    if not alertmanager_url.startswith(("http://", "https://")):
        return ""
    matchers = ",".join(f'{name}="{value}"' for name, value in sorted(labels.items()))
    return f"{alertmanager_url.rstrip('/')}/#/silences/new?filter=" + urllib.parse.quote("{" + matchers + "}")


def _link(url: str, text: str) -> str:
    # Only web links: a notification is input from the network, not trusted markup.
    if not url.startswith(("http://", "https://", "/")):
        return ""
    return f"<a href='{html.escape(url, quote=True)}'>{text}</a>"


def render_alerts(alerts: list[dict], heartbeat: dict | None = None) -> bytes:
    rows = "".join(
        "<tr>"
        f"<td>{html.escape(a['received_at'])}</td>"
        f"<td class='{html.escape(a['status'])}'>{html.escape(a['status'])}</td>"
        f"<td>{html.escape(a['route'])}</td><td>{html.escape(a['severity'])}</td>"
        f"<td>{html.escape(a['alertname'])}</td><td>{html.escape(a['summary'])}</td>"
        f"<td>{html.escape(a['description'])}</td>"
        f"<td>{_link(runbook_link(a['runbook_url']), 'runbook')} {_link(a.get('generator_url', ''), 'Prometheus')} "
        f"{_link(a.get('silence_url', ''), 'silence')}</td>"
        "</tr>"
        for a in alerts
    )
    return _page(
        "Alerts received",
        f"<h1>Alerts received ({len(alerts)})</h1>{render_heartbeat(heartbeat) if heartbeat else ''}"
        "<p>Newest first; refreshes every 15 s. "
        "<a href='/runbook'>Runbook</a> · <a href='/alerts'>JSON</a></p>"
        "<table><tr><th>received (UTC)</th><th>status</th><th>route</th><th>severity</th>"
        f"<th>alert</th><th>summary</th><th>description</th><th></th></tr>{rows}</table>",
        refresh=True,
    )


def render_runbook(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return _page("Runbook", f"<p>No runbook at {html.escape(str(path))} (set RUNBOOK_PATH).</p>")
    # Section ids are the headings in lower case, so #hvsapidown finds "## HvsApiDown".
    body = markdown.markdown(text, extensions=["toc", "tables"], extension_configs={"toc": {"slugify": _slug}})
    return _page("HVS runbook", body)


def _slug(value: str, separator: str) -> str:
    return re.sub(r"[^a-z0-9]+", separator, value.lower()).strip(separator)


class Handler(BaseHTTPRequestHandler):
    """Serves one request; the server object carries the alert log and the runbook path."""

    server_version = "hvs-alert-receiver"

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            page = render_alerts(self.server.alert_log.newest_first(), self.server.heartbeat.state())
            self._send(200, page, "text/html; charset=utf-8")
        elif path == "/alerts":
            self._json(200, self.server.alert_log.newest_first())
        elif path == "/heartbeat":
            self._json(200, self.server.heartbeat.state())
        elif path == "/runbook":
            self._send(200, render_runbook(self.server.runbook_path), "text/html; charset=utf-8")
        elif path == "/health":
            self._json(200, {"status": "ok"})
        else:
            self._json(404, {"error": "not_found", "message": f"no page at {path}"})

    def do_POST(self) -> None:
        match = ROUTE.match(self.path.split("?", 1)[0])
        if not match:
            self._json(404, {"error": "not_found", "message": "post notifications to /alerts/<route>"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "bad_length", "message": "send a JSON body of at most 1 MiB"})
            return
        try:
            notification = json.loads(self.rfile.read(length))
            if not isinstance(notification, dict) or not isinstance(notification.get("alerts"), list):
                raise ValueError("not an Alertmanager notification")
            if match.group(1) == HEARTBEAT_ROUTE:
                self.server.heartbeat.add(notification)
                entries = []
            else:
                entries = self.server.alert_log.add(match.group(1), notification)
        except (ValueError, AttributeError) as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "malformed_notification", "message": str(exc)})
            return
        for entry in entries:
            print(json.dumps(entry), flush=True)
        self._json(200, {"received": len(notification["alerts"])})

    def log_message(self, format: str, *args) -> None:
        log.debug(format, *args)


def serve(
    host: str,
    port: int,
    runbook_path: Path,
    keep: int = 500,
    heartbeat_max_silence: float = HEARTBEAT_MAX_SILENCE_SECONDS,
) -> ThreadingHTTPServer:
    """Build the server (call ``serve_forever`` on it)."""
    server = ThreadingHTTPServer((host, port), Handler)
    server.alert_log = AlertLog(keep)
    server.heartbeat = Heartbeat(heartbeat_max_silence)
    server.runbook_path = runbook_path
    return server


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    settings = ReceiverSettings.from_env()
    runbook = Path(settings.runbook_path)
    server = serve(settings.host, settings.port, runbook, settings.keep, settings.heartbeat_max_silence_seconds)
    log.info("alert receiver listening on %s:%d, runbook %s", settings.host, settings.port, runbook)
    server.serve_forever()
