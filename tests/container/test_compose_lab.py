"""The lab as a user runs it: `docker compose build` and `up` from the committed files, then
what the README promises of it, each step its own test. The steps run in file order on one lab
(a step that needs an earlier one says so when that one failed)."""

import json
import re
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

import yaml
from hvs_store import MODEL_NAME
from selenium.webdriver.common.by import By

from tests.container.browser import page_shows, text
from tests.container.compose import compose_default, failure, services
from tests.container.engine import standin_label
from tests.support.metrics_text import metric_value, predict_ok, samples, values_by_label
from tests.support.paths import HAZARDOUS, NORMAL, ROOT
from tests.support.rules import rule_groups, seconds
from tests.support.waiting import Steps, wait_for
from tests.support.web import answers_200, http, scrape_problems

MODEL_RELOAD_SECONDS = float(compose_default("MODEL_RELOAD_SECONDS"))
steps = Steps()
after = steps.after


def ready_version(lab) -> str:
    status, body = http("GET", lab.url("api") + "/ready")
    assert status == 200, body
    return json.loads(body)["model"]["version"]


def champion_in_registry(lab) -> str:
    """The champion alias's version, from the MLflow server's REST API (the UI container)."""
    query = urllib.parse.urlencode({"name": MODEL_NAME, "alias": "champion"})
    status, body = http("GET", f"{lab.url('mlflow')}/api/2.0/mlflow/registered-models/alias?{query}")
    assert status == 200, body
    return json.loads(body)["model_version"]["version"]


def test_images_build_from_the_committed_files(lab):
    result = lab.compose("build", timeout=1200)
    assert result.returncode == 0, failure(result, "docker compose build")
    steps.done("build")


def test_every_service_becomes_healthy_and_the_trainer_exits_0(lab):
    after("build")
    # Two load generators, as `docker compose up --scale locust-worker=2` gives.
    result = lab.up("--scale", "locust-worker=2")
    states = {(c["Service"], c["State"], c.get("Health", ""), c.get("ExitCode")) for c in lab.containers()}
    assert result.returncode == 0, failure(result, "docker compose up --wait") + f"\n{sorted(states)}"
    trainer = [s for s in states if s[0] == "trainer"]
    assert trainer == [("trainer", "exited", "", 0)], trainer
    unhealthy = [s for s in states if s[0] != "trainer" and (s[1], s[2]) != ("running", "healthy")]
    assert not unhealthy, f"not running and healthy: {unhealthy}"
    assert {s[0] for s in states} == set(services())
    assert "BEST_MLFLOW_RUN_ID=" in lab.logs("trainer"), "the first start trains a champion"
    steps.done("up")


def test_the_users_payloads_are_predicted_and_counted(lab):
    after("up")
    api = lab.url("api")
    for payload, label in ((NORMAL, "Normal"), (HAZARDOUS, "Hazardous")):
        status, body = http("POST", api + "/predict", payload)
        assert status == 200, body
        assert json.loads(body)["prediction"]["label"] == label
    metrics = http("GET", api + "/metrics")[1].decode()
    assert predict_ok(metrics) == 2
    for label in ("Normal", "Hazardous"):
        assert metric_value(metrics, "hvs_api_prediction_outcomes_total", predicted_label_text=label) == 1


def test_a_label_is_counted_once_and_its_ledger_survives_a_restart_of_the_api(lab):
    """The feedback ledger is on the mlruns volume, written by the API's non-root user."""
    after("up")
    api = lab.url("api")
    status, body = http("POST", api + "/predict", HAZARDOUS)
    assert status == 200, body
    label = {"id": json.loads(body)["prediction"]["id"], "label": "Hazardous"}
    status, body = http("POST", api + "/feedback", label)
    assert status == 200, body
    result = lab.compose("restart", "api")
    assert result.returncode == 0, failure(result, "docker compose restart api")
    # answers_200, not http(): while the container restarts, its published port resets connections.
    wait_for(lambda: answers_200(api + "/ready"), 120, "the API to be ready again")
    assert http("POST", api + "/feedback", label)[0] == 409
    metrics = http("GET", api + "/metrics")[1].decode()
    labelled = {
        (labels["model_role"], labels["predicted_label_text"], labels["true_label_text"]): value
        for name, labels, value in samples(metrics)
        if name == "hvs_model_feedback_records_total" and labels["model_role"] == "champion"
    }
    # No load has run yet: this one label, once, before and after the restart.
    assert labelled == {("champion", "Hazardous", "Hazardous"): 1}
    assert metric_value(metrics, "hvs_api_invalid_feedback_total", reason="already_labelled") == 1


def rules_by_group(prometheus: str) -> dict[str, list[dict]]:
    body = json.loads(http("GET", prometheus + "/api/v1/rules")[1])
    return {group["name"]: group["rules"] for group in body["data"]["groups"]}


# Groups with an interval of their own (the SLOs' long windows, every 5 minutes) first run up
# to one interval after Prometheus starts; the others every 15 s from the start.
SLOW_GROUPS = {group["name"]: seconds(group["interval"]) for group in rule_groups() if "interval" in group}


def test_prometheus_scrapes_the_lab_and_every_rule_is_healthy(lab):
    after("up")
    prometheus = lab.url("prometheus")
    jobs = ("hvs-api", "hvs-api-probe", "prometheus", "alertmanager")

    def targets_up():
        body = json.loads(http("GET", prometheus + "/api/v1/targets")[1])
        # A job may have several targets (the probe asks /ready and /predict): every one is up.
        health: dict[str, set[str]] = {}
        for t in body["data"]["activeTargets"]:
            health.setdefault(t["labels"]["job"], set()).add(t["health"])
        return health if all(health.get(job) == {"up"} for job in jobs) else None

    wait_for(targets_up, 60, f"the {', '.join(jobs)} targets to be up", interval=2)
    # Prometheus 3 fails a scrape without a valid exposition Content-Type (no job sets
    # fallback_scrape_protocol). Every target that runs here is scraped without error, and
    # answers a valid type when asked from the host through its published port.
    active = json.loads(http("GET", prometheus + "/api/v1/targets")[1])["data"]["activeTargets"]
    published = {"hvs-api": lab.url("api"), "prometheus": prometheus, "alertmanager": lab.url("alertmanager")}
    running = [
        {**t, "scrapeUrl": published[t["labels"]["job"]] + urllib.parse.urlsplit(t["scrapeUrl"]).path}
        for t in active
        if t["labels"]["job"] in published
    ]
    assert {t["labels"]["job"] for t in running} == set(published)
    probe = [t for t in active if t["labels"]["job"] == "hvs-api-probe"]
    assert sorted((t["labels"]["module"], t["health"], t["lastError"]) for t in probe) == [
        ("hvs_api_predict", "up", ""),
        ("hvs_api_ready", "up", ""),
    ], probe
    assert scrape_problems(running) == []
    # Both black-box probes reach the API through the blackbox service, as a client would:
    # /ready answers, and the fixed record POSTed to /predict comes back with a prediction.
    wait_for(
        lambda: len(lab.prometheus('probe_success{job="hvs-api-probe"} == 1')) == 2,
        60,
        "both probes to succeed",
        interval=2,
    )

    def fast_rules_ok():
        found = [r for name, rules in rules_by_group(prometheus).items() if name not in SLOW_GROUPS for r in rules]
        return found if found and all(r["health"] == "ok" for r in found) else None

    healthy = wait_for(fast_rules_ok, 60, "every rule to be evaluated without error", interval=2)
    expected = [rule for group in rule_groups() if group["name"] not in SLOW_GROUPS for rule in group["rules"]]
    assert len(healthy) == len(expected)
    steps.done("rules")


def test_a_locust_swarm_from_the_web_ui_reaches_prometheus(lab):
    after("up")
    locust = lab.url("locust")
    wait_for(lambda: len(json.loads(http("GET", locust + "/stats/requests")[1])["workers"]) == 2, 60, "2 workers")
    # What the web UI's Start button posts, with the class picker's choice.
    form = urllib.parse.urlencode(
        {"user_count": 4, "spawn_rate": 4, "host": "http://api:5001", "user_classes": "SteadyUser"}
    ).encode()
    status, body = _post_form(locust + "/swarm", form)
    assert status == 200 and json.loads(body)["success"], body
    try:
        query = 'sum(rate(flask_http_request_total{job="hvs-api", endpoint="/predict"}[1m]))'
        wait_for(lambda: [r for r in lab.prometheus(query) if float(r["value"][1]) > 0], 90, "a /predict rate > 0")
        stats = json.loads(http("GET", locust + "/stats/requests")[1])
    finally:
        _post_form(locust + "/stop", b"")
    [total] = [s for s in stats["stats"] if s["name"] == "Aggregated"]
    assert total["num_requests"] > 0 and total["num_failures"] == 0, (total, stats.get("errors"))
    assert stats["user_count"] == 4


def _post_form(url: str, form: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=form, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def test_slow_clients_through_the_published_port_do_not_starve_the_api(lab, slow_clients_check):
    """Placed after the Locust step, which waits for a /predict rate in Prometheus that only its
    swarm may cause, and after the payloads step, whose counts it would change. Its burst of
    refused requests (the 413, and the slow bodies cut off when they close) is one scrape's
    worth: the 5-minute invalid-input ratio holds it for less than that alert's `for: 5m`."""
    after("up")
    slow_clients_check(lab.ports["api"])


def test_retrain_moves_the_champion_and_every_worker_serves_it_without_a_restart(lab):
    after("up")
    old = ready_version(lab)
    started = lab.inspect("api")["State"]["StartedAt"]
    result = lab.run("make", "retrain", timeout=900)
    assert result.returncode == 0, failure(result, "make retrain")
    promoted = time.monotonic()
    new = champion_in_registry(lab)
    # A training of the four candidates registers two versions: the champion, then the challenger.
    assert int(new) == int(old) + 2, (old, new)

    api = lab.url("api")

    # Every worker publishes its model as it starts and when it switches, setting the replaced
    # version's series to 0; hvs_model_info is the highest value over the live workers, and
    # hvs_model_loaded the lowest. So the old version at 0 and the new at 1 mean that every
    # live worker has switched, which no sequence of requests could show (any worker may
    # accept any of them).
    def every_worker_serves(version: str):
        metrics = http("GET", api + "/metrics")[1].decode()
        info = values_by_label(metrics, "hvs_model_info", "model_version")
        loaded = metric_value(metrics, "hvs_model_loaded")
        return info if (info.get(old), info.get(version), loaded) == (0, 1, 1) else None

    wait_for(lambda: every_worker_serves(new), MODEL_RELOAD_SECONDS + 30, f"every worker to serve version {new}")
    assert time.monotonic() - promoted < MODEL_RELOAD_SECONDS + 30
    # And what they answer says so, each request on a new connection.
    answers = [http("POST", api + "/predict", NORMAL) for _ in range(20)]
    assert [status for status, _ in answers] == [200] * 20, answers
    versions = {json.loads(body)["prediction"]["model_version"] for _, body in answers}
    assert versions == {new}, versions
    state = lab.inspect("api")["State"]
    assert state["StartedAt"] == started and state["Status"] == "running", "the API was restarted"

    def info_in_prometheus():
        values = {r["metric"]["model_version"]: float(r["value"][1]) for r in lab.prometheus("hvs_model_info")}
        return values if values.get(new) == 1 and values.get(old) == 0 else None

    wait_for(info_in_prometheus, 60, f"hvs_model_info: version {new} at 1 and {old} at 0", interval=2)
    steps.done("retrain")


def test_the_locust_ui_offers_every_scenario_and_both_shapes(lab, browser):
    after("up")
    loadtest = ROOT / "loadtest"
    scenarios = re.findall(r"^class (\w+)\(PredictionUser\)", (loadtest / "locustfile.py").read_text(), re.M)
    shapes = [
        m for f in sorted(loadtest.glob("shapes/*.py")) for m in re.findall(r"^class (\w+)\(", f.read_text(), re.M)
    ]
    assert len(scenarios) == 4 and len(shapes) == 2, (scenarios, shapes)
    browser.get(lab.url("locust"))

    def form_or_new_button(driver):
        buttons = [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip().upper() == "NEW"]
        return "Start new load test" in text(driver) or buttons

    # After a run the page shows that run's statistics, and its New button opens the form again.
    if isinstance(shown := page_shows(browser, form_or_new_button, 20, "the start form", "locust-home"), list):
        shown[0].click()

    def picker(driver):
        shown = text(driver)
        if "User Classes" not in shown or "Shape Class" not in shown:
            return False
        users, _, shape_part = shown.partition("User Classes")[2].partition("Shape Class")
        return all(s in users for s in scenarios) and all(s in shape_part for s in shapes)

    page_shows(browser, picker, 20, f"the class picker with {scenarios} and {shapes}", "locust")


def test_the_mlflow_ui_shows_the_runs_and_the_champion_alias(lab, browser):
    after("retrain")
    from hvs_model.train import CANDIDATES

    browser.get(lab.url("mlflow"))
    experiment = page_shows(
        browser, lambda d: d.find_elements(By.LINK_TEXT, MODEL_NAME), 30, "the experiment", "mlflow-home"
    )[0]
    browser.get(experiment.get_attribute("href"))
    runs = page_shows(browser, lambda d: d.find_elements(By.LINK_TEXT, "Training runs"), 30, "its runs", "mlflow-exp")
    browser.get(runs[0].get_attribute("href"))
    names = [c.name for c in CANDIDATES]
    page_shows(browser, lambda d: all(n in text(d) for n in names), 30, f"the runs {names}", "mlflow-runs")
    champion = champion_in_registry(lab)

    def alias_on_champion(driver):
        shown = text(driver)
        return "@ champion" in shown.partition(f"Version {champion}")[2].partition("Version ")[0]

    browser.get(f"{lab.url('mlflow')}/#/models/{MODEL_NAME}")
    page_shows(browser, alias_on_champion, 30, f"version {champion} with the champion alias", "mlflow-model")


def test_the_first_five_minutes_deliver_only_the_watchdogs_heartbeat(lab):
    """A clean `docker compose up` pages nobody, and tickets nobody.

    Checked here, after the steps that take minutes anyway (training, traffic, retraining), so
    that it waits only for what is left of the 5 minutes, if anything: it holds for all the
    receiver got since it started, which is after `up` began.
    """
    after("up")
    receiver = lab.url("alert-receiver")
    started = datetime.fromisoformat(re.sub(r"\.\d+", "", lab.inspect("alert-receiver")["State"]["StartedAt"]))
    left = (started + timedelta(minutes=5) - datetime.now(UTC)).total_seconds()
    time.sleep(max(0.0, left))
    alerts = json.loads(http("GET", receiver + "/alerts")[1])
    assert [(a["route"], a["alertname"], a["status"]) for a in alerts] == []
    heartbeat = json.loads(http("GET", receiver + "/heartbeat")[1])
    assert heartbeat["alertnames"] == ["Watchdog"] and heartbeat["received"] >= 1, heartbeat
    assert heartbeat["state"] == "ok", heartbeat


def test_the_slow_rule_groups_are_evaluated_without_error_within_their_interval(lab):
    after("rules")
    prometheus = lab.url("prometheus")
    started = datetime.fromisoformat(re.sub(r"\.\d+", "", lab.inspect("prometheus")["State"]["StartedAt"]))
    # Placed after the steps that take minutes anyway, so that it seldom waits at all.
    deadline = started + timedelta(seconds=max(SLOW_GROUPS.values()) + 60)

    def slow_rules_ok():
        groups = rules_by_group(prometheus)
        found = [r for name in SLOW_GROUPS for r in groups.get(name, [])]
        return found if found and all(r["health"] == "ok" for r in found) else None

    left = max(5.0, (deadline - datetime.now(UTC)).total_seconds())
    healthy = wait_for(slow_rules_ok, left, "every rule of the slow groups to be evaluated without error", interval=5)
    assert len(healthy) == sum(len(group["rules"]) for group in rule_groups() if group["name"] in SLOW_GROUPS)


def inhibited_by_api_down() -> re.Pattern:
    """The alert names Alertmanager holds back while HvsApiDown fires (alertmanager.yml)."""
    config = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    [rule] = [r for r in config["inhibit_rules"] if r["source_matchers"] == ['alertname="HvsApiDown"']]
    [matcher] = rule["target_matchers"]
    return re.compile(re.fullmatch(r'alertname=~"(.+)"', matcher).group(1))


def test_stopping_the_api_delivers_hvsapidown_and_holds_back_what_it_inhibits(lab):
    after("up")
    receiver = lab.url("alert-receiver")
    # Until now (a clean first start, training included, then the earlier steps' traffic and
    # retraining) nothing has paged.
    pages = [a["alertname"] for a in json.loads(http("GET", receiver + "/alerts")[1]) if a["route"] == "pages"]
    assert pages == [], pages
    result = lab.compose("stop", "api")
    assert result.returncode == 0, failure(result, "docker compose stop api")

    def delivered():
        alerts = json.loads(http("GET", receiver + "/alerts")[1])
        return [a for a in alerts if a["alertname"] == "HvsApiDown" and a["status"] == "firing"]

    # `for: 1m` after the first failed scrape (15 s apart), then the page route's 10 s group_wait.
    [down] = wait_for(delivered, 180, "HvsApiDown at the alert receiver", interval=3)
    assert down["route"] == "pages" and down["severity"] == "critical"
    # Its links open from the host: Prometheus's and Alertmanager's external URLs.
    assert down["generator_url"].startswith(f"http://localhost:{lab.ports['prometheus']}/graph?"), down
    assert down["silence_url"].startswith(f"http://localhost:{lab.ports['alertmanager']}/#/silences/new?"), down
    inhibited = inhibited_by_api_down()
    received = {a["alertname"] for a in json.loads(http("GET", receiver + "/alerts")[1])}
    assert not {name for name in received if inhibited.fullmatch(name)}, received
    # Whatever of those is active in Alertmanager is marked as inhibited by HvsApiDown.
    active = json.loads(http("GET", lab.url("alertmanager") + "/api/v2/alerts")[1])
    for alert in active:
        if inhibited.fullmatch(alert["labels"]["alertname"]):
            assert alert["status"]["state"] == "suppressed" and alert["status"]["inhibitedBy"], alert
    steps.done("api-down")


# Real browser checks of the pages the lab serves: what the page shows, with a screenshot of
# each under results/screenshots/.


def test_the_alert_receivers_page_shows_hvsapidown_and_links_its_runbook_section(lab, browser):
    after("api-down")
    browser.get(lab.url("alert-receiver"))

    def down_row(driver):
        rows = driver.find_elements(By.XPATH, "//tr[td[normalize-space()='HvsApiDown'] and td[@class='firing']]")
        return rows[0] if rows else None

    row = page_shows(browser, down_row, 20, "a firing HvsApiDown row", "alert-receiver")
    link = row.find_element(By.LINK_TEXT, "runbook")
    browser.get(link.get_attribute("href"))
    section = page_shows(browser, lambda d: d.find_elements(By.ID, "hvsapidown"), 10, "#hvsapidown", "runbook")[0]
    assert section.is_displayed() and section.text == "HvsApiDown"


def image_of(service: str) -> str:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][service]["image"]


# Debian's packages, which the stand-ins are built from, ship neither Prometheus's React UI nor
# Alertmanager's Elm UI (Debian cannot build them under its policy); in their place each serves a
# page of Debian's that says so. The official images serve the UIs.
DEBIAN_NO_UI = "does not include"


def test_the_alerts_prometheus_link_opens_its_expression_on_prometheus_3s_query_page(lab, browser):
    after("api-down")
    [down] = [
        a for a in json.loads(http("GET", lab.url("alert-receiver") + "/alerts")[1]) if a["alertname"] == "HvsApiDown"
    ]
    expression = urllib.parse.parse_qs(urllib.parse.urlsplit(down["generator_url"]).query)["g0.expr"][0]
    assert expression.startswith('max by (job) (up{job="hvs-api"})'), expression
    # Through the receiver's page, as a user clicks it. Prometheus 3 answers the link's /graph
    # (the path Prometheus 2 used) with a redirect to the new UI's /query, the expression kept.
    browser.get(lab.url("alert-receiver"))
    row = page_shows(browser, lambda d: d.find_elements(By.XPATH, "//tr[td[normalize-space()='HvsApiDown']]"), 20,
                     "an HvsApiDown row", "alert-receiver-links")[0]  # fmt: skip
    browser.get(row.find_element(By.LINK_TEXT, "Prometheus").get_attribute("href"))
    landed = urllib.parse.urlsplit(browser.current_url)
    assert landed.path == "/query", browser.current_url
    assert urllib.parse.parse_qs(landed.query)["g0.expr"] == [expression]
    if standin_label(image_of("prometheus")):
        page_shows(browser, lambda d: DEBIAN_NO_UI in text(d), 10, "Debian's page without the UI", "prometheus-query")
    else:
        # The new UI puts the expression in its editor and runs it.
        page_shows(browser, lambda d: "up{job=" in text(d), 20, f"the expression {expression}", "prometheus-query")


def test_the_alerts_silence_link_opens_alertmanagers_new_silence_page_with_its_matchers(lab, browser):
    after("api-down")
    [down] = [
        a for a in json.loads(http("GET", lab.url("alert-receiver") + "/alerts")[1]) if a["alertname"] == "HvsApiDown"
    ]
    link = urllib.parse.urlsplit(down["silence_url"])
    assert (link.path, link.fragment.partition("?")[0]) == ("/", "/silences/new"), down["silence_url"]
    matchers = urllib.parse.parse_qs(link.fragment.partition("?")[2])["filter"][0]
    assert 'alertname="HvsApiDown"' in matchers and 'severity="critical"' in matchers, matchers
    browser.get(down["silence_url"])
    if standin_label(image_of("alertmanager")):
        page_shows(
            browser, lambda d: DEBIAN_NO_UI in text(d) or "UI" in text(d), 10, "Debian's page", "alertmanager-silence"
        )
    else:
        page_shows(browser, lambda d: "HvsApiDown" in text(d) and "Silence" in text(d), 20,
                   "the new-silence form with HvsApiDown's matchers", "alertmanager-silence")  # fmt: skip


def test_prometheus_lists_every_rule_and_hvsapidown_firing_on_its_alerts_page(lab, browser):
    after("api-down")
    names = sorted(r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r)
    # What the page shows comes from the rules API: every alert rule, HvsApiDown firing.
    listed = [r for rules in rules_by_group(lab.url("prometheus")).values() for r in rules if r["type"] == "alerting"]
    assert sorted({r["name"] for r in listed}) == sorted(set(names))
    assert any(r["name"] == "HvsApiDown" and r["state"] == "firing" for r in listed)
    browser.get(lab.url("prometheus") + "/alerts")
    if standin_label(image_of("prometheus")):
        page_shows(browser, lambda d: DEBIAN_NO_UI in text(d), 10, "Debian's page without the UI", "prometheus-alerts")
        return
    # The new UI's alerts page: one entry per rule, the firing one marked.
    page_shows(browser, lambda d: all(name in text(d) for name in names) and "firing" in text(d).lower(), 20,
               f"{names} with HvsApiDown firing", "prometheus-alerts")  # fmt: skip


def test_down_then_up_keeps_the_model_and_does_not_train_again(lab):
    after("up")
    champion = champion_in_registry(lab)
    result = lab.compose("down", "--timeout", "10")
    assert result.returncode == 0, failure(result, "docker compose down")
    result = lab.up()
    assert result.returncode == 0, failure(result, "docker compose up after down")
    assert "not training" in lab.logs("trainer")
    assert ready_version(lab) == champion


def test_make_reset_forgets_the_model_and_the_next_up_trains(lab):
    after("up")
    result = lab.run("make", "reset")
    assert result.returncode == 0, failure(result, "make reset")
    project = f"label=com.docker.compose.project={lab.project}"
    volumes = lab.run("docker", "volume", "ls", "--quiet", "--filter", project).stdout.split()
    assert volumes == [], f"make reset left the project's volumes {volumes}"
    result = lab.up()
    assert result.returncode == 0, failure(result, "docker compose up after make reset")
    assert "BEST_MLFLOW_RUN_ID=" in lab.logs("trainer")
    assert ready_version(lab) == "1"
