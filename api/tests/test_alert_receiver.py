import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

import hvs_alert_receiver as alert_receiver
import pytest
import yaml

from tests.support.environment import modules_of_the_api_loaded_by
from tests.support.paths import ROOT
from tests.support.rules import seconds


def test_the_receiver_imports_nothing_of_the_api():
    """A deployable of its own: the standard library and markdown, none of the API."""
    assert modules_of_the_api_loaded_by("import hvs_alert_receiver") == []
    # The check sees the API when it is loaded.
    assert "flask" in modules_of_the_api_loaded_by("import hvs_api")


NOTIFICATION = {
    "receiver": "lab-pages",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "HvsApiDown", "severity": "critical", "job": "hvs-api"},
            "annotations": {
                "summary": "The HVS Prediction API is down.",
                "description": "<script>alert(1)</script>",
                "runbook_url": "http://localhost:9095/runbook#hvsapidown",
            },
            "startsAt": "2026-11-27T10:00:00Z",
            "generatorURL": "http://localhost:9090/graph?g0.expr=up%3D%3D0",
        }
    ],
    "externalURL": "http://localhost:9093",
}


@pytest.fixture
def receiver():
    """A receiver on a free port, serving the repository's runbook."""
    server = alert_receiver.serve("127.0.0.1", 0, ROOT / "prometheus" / "runbook.md", keep=3)
    # A request's thread may still be closing its socket after the client has read the answer;
    # non-daemon request threads are joined by server_close, so none outlives the test.
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def call(url, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_notifications_are_kept_listed_and_logged(receiver, capsys):
    assert call(receiver + "/alerts/pages", NOTIFICATION) == (200, '{"received": 1}')
    [alert] = json.loads(call(receiver + "/alerts")[1])
    assert (alert["route"], alert["alertname"], alert["severity"], alert["status"]) == (
        "pages",
        "HvsApiDown",
        "critical",
        "firing",
    )
    assert json.loads(capsys.readouterr().out.strip())["alertname"] == "HvsApiDown"
    page = call(receiver + "/")[1]
    assert "HvsApiDown" in page and "<script>" not in page and "&lt;script&gt;" in page
    # The receiver's own runbook, whatever port it is published on.
    assert "href='/runbook#hvsapidown'" in page


def test_each_alert_links_its_prometheus_expression_and_a_silence_of_its_labels(receiver):
    hostile = {**NOTIFICATION["alerts"][0], "generatorURL": "javascript:alert(1)"}
    call(receiver + "/alerts/pages", NOTIFICATION)
    call(receiver + "/alerts/pages", {**NOTIFICATION, "alerts": [hostile], "externalURL": "javascript:x"})
    hostile_entry, alert = json.loads(call(receiver + "/alerts")[1])
    assert alert["generator_url"] == "http://localhost:9090/graph?g0.expr=up%3D%3D0"
    assert alert["silence_url"] == (
        "http://localhost:9093/#/silences/new?filter="
        + urllib.parse.quote('{alertname="HvsApiDown",job="hvs-api",severity="critical"}')
    )
    page = call(receiver + "/")[1]
    assert f"href='{alert['silence_url']}'" in page and "href='http://localhost:9090/graph" in page
    # Links from the network are followed only when they are web links.
    assert hostile_entry["silence_url"] == "" and "javascript:" not in page


def test_runbooks_elsewhere_are_linked_as_they_are():
    url = "https://wiki.example.org/runbooks#hvsapidown"
    assert alert_receiver.runbook_link(url) == url


def test_only_the_newest_are_kept(receiver):
    for i in range(5):
        body = json.loads(json.dumps(NOTIFICATION))
        body["alerts"][0]["labels"]["alertname"] = f"A{i}"
        call(receiver + "/alerts/tickets", body)
    assert [a["alertname"] for a in json.loads(call(receiver + "/alerts")[1])] == ["A4", "A3", "A2"]


def test_runbook_sections_have_the_ids_the_alerts_link_to(receiver):
    page = call(receiver + "/runbook")[1]
    for anchor in ("hvsapidown", "hvsmodelhazardoussharedrift", "hvsapierrorbudgetburnfast"):
        assert f'id="{anchor}"' in page


@pytest.mark.parametrize(
    ("path", "raw", "status"),
    [
        ("/alerts/pages", b"not json", 400),
        ("/alerts/pages", b"[]", 400),
        ("/alerts/pages", b'{"alerts": 3}', 400),
        ("/alerts/../etc", b"{}", 404),
        ("/elsewhere", b"{}", 404),
    ],
)
def test_bad_posts_are_refused(receiver, path, raw, status):
    code, body = call(receiver + path, raw=raw)
    assert code == status and json.loads(body)["error"]
    assert json.loads(call(receiver + "/alerts")[1]) == []


WATCHDOG = {
    "receiver": "lab-heartbeat",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "Watchdog", "severity": "none"},
            "annotations": {"summary": "The alerting pipeline is alive (always firing)."},
        }
    ],
}
START = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)


def test_the_heartbeat_is_shown_apart_and_not_listed_with_the_alerts(receiver, capsys):
    assert json.loads(call(receiver + "/heartbeat")[1])["state"] == "waiting"
    assert call(receiver + "/alerts/heartbeat", WATCHDOG) == (200, '{"received": 1}')
    call(receiver + "/alerts/pages", NOTIFICATION)
    # Neither a page nor a ticket: the list holds only the real alert, and the log says nothing of it.
    assert [a["alertname"] for a in json.loads(call(receiver + "/alerts")[1])] == ["HvsApiDown"]
    assert "Watchdog" not in capsys.readouterr().out
    heartbeat = json.loads(call(receiver + "/heartbeat")[1])
    assert (heartbeat["state"], heartbeat["received"], heartbeat["alertnames"]) == ("ok", 1, ["Watchdog"])
    assert heartbeat["last_received_at"] and heartbeat["max_silence_seconds"] == 150
    page = call(receiver + "/")[1]
    assert "class='heartbeat-ok'>Heartbeat ok: last at " in page and "Alerts received (1)" in page
    assert "<td>Watchdog</td>" not in page


def test_the_heartbeat_goes_missing_after_its_silence_and_at_once_when_resolved():
    heartbeat = alert_receiver.Heartbeat(150, started=START)
    # None yet: waiting while the route could still be on its way, then missing.
    assert heartbeat.state(START + timedelta(seconds=150))["state"] == "waiting"
    assert heartbeat.state(START + timedelta(seconds=151))["state"] == "missing"
    heartbeat.add(WATCHDOG, now=START + timedelta(seconds=200))
    assert heartbeat.state(START + timedelta(seconds=350))["state"] == "ok"
    late = heartbeat.state(START + timedelta(seconds=351))
    assert (late["state"], late["seconds_since"]) == ("missing", 151)
    heartbeat.add(WATCHDOG, now=START + timedelta(seconds=360))
    assert heartbeat.state(START + timedelta(seconds=361))["state"] == "ok"
    # Alertmanager resolves the Watchdog when Prometheus stops sending it.
    heartbeat.add({**WATCHDOG, "status": "resolved"}, now=START + timedelta(seconds=370))
    assert heartbeat.state(START + timedelta(seconds=371))["state"] == "missing"
    assert heartbeat.state(START + timedelta(seconds=371))["received"] == 3


@pytest.mark.parametrize(
    ("events", "now", "shown"),
    [
        ([], 10, "Waiting for the first heartbeat (missing after 150 s without one)."),
        ([], 200, "Heartbeat missing: none in the 200 s since the receiver started."),
        ([(30, "firing")], 400, "Heartbeat missing: the last came at 2026-11-28T08:00:30+00:00 UTC, 370 s ago."),
        ([(30, "resolved")], 40, "Heartbeat missing: the Watchdog was resolved at 2026-11-28T08:00:30+00:00 UTC."),
    ],
)
def test_the_page_says_why_the_heartbeat_is_not_ok(events, now, shown):
    heartbeat = alert_receiver.Heartbeat(150, started=START)
    for at, status in events:
        heartbeat.add({**WATCHDOG, "status": status}, now=START + timedelta(seconds=at))
    state = heartbeat.state(START + timedelta(seconds=now))
    line = alert_receiver.render_heartbeat(state)
    assert shown in line and f"class='heartbeat-{state['state']}'" in line
    assert alert_receiver.render_alerts([], state).decode().count(shown) == 1


def test_the_silence_allowed_is_the_heartbeat_routes_longest_gap_plus_a_minute():
    config = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    [route] = [r for r in config["route"]["routes"] if r["matchers"] == ['alertname="Watchdog"']]
    [receiver] = [r for r in config["receivers"] if r["name"] == route["receiver"]]
    [hook] = receiver["webhook_configs"]
    assert hook["url"].endswith("/alerts/" + alert_receiver.HEARTBEAT_ROUTE) and hook["send_resolved"]
    longest_gap = seconds(route["repeat_interval"]) + seconds(route["group_interval"])
    assert alert_receiver.HEARTBEAT_MAX_SILENCE_SECONDS == longest_gap + 60
