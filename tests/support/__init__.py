"""Helpers shared by the test suites, one module per concern.

- ``paths``: the project root and the example payloads;
- ``dockerfile``: the image's Dockerfile as data (its ENV and CMD);
- ``web``: free ports, HTTP requests, readiness, scrape checks;
- ``waiting``: ``wait_for`` (with ``NotYet``) and the ordered ``Steps`` of a scenario;
- ``metrics_text``: reading a /metrics page;
- ``rules``: the rule files and Prometheus durations;
- ``api_server``: the API under gunicorn, and requests pinned to one worker;
- ``dashboards``: the dashboards' panel queries;
- ``environment``: environment variables, a run's id, the modules an import loads.

Starting and stopping programs is ``loadtest.managed_process``, which the benchmarks share.
"""
