"""hvs_settings: one parser per kind of value, defaults for unset or empty variables, a refusal
naming the variable for anything else, and docs/configuration.md generated from the classes."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hvs_settings import (
    ApiSettings,
    LoadTestSettings,
    ReceiverSettings,
    SettingError,
    StoreSettings,
    markdown_tables,
)
from hvs_settings.__main__ import with_tables

from tests.support.environment import modules_of_the_api_loaded_by

ROOT = Path(__file__).resolve().parents[2]
CLASSES = (ApiSettings, ReceiverSettings, LoadTestSettings, StoreSettings)


def test_unset_and_empty_variables_take_the_defaults():
    assert ApiSettings.from_env({}) == ApiSettings()
    # `make serve` passes WORKERS= when no count is given: one worker per CPU, as unset.
    assert ApiSettings.from_env({"WORKERS": "", "PORT": "  "}) == ApiSettings()
    assert ApiSettings().workers is None and ApiSettings().port == 5001 and ReceiverSettings().port == 9095


def test_each_kind_parses_what_it_documents():
    settings = ApiSettings.from_env(
        {
            "WORKERS": "4",
            "FAULT_INJECTION_ENABLED": "Yes",
            "METRICS_ENABLED": "off",
            "MODEL_RELOAD_SECONDS": "0",
            "WORKER_CLASS": " SYNC ",
            "ACCESS_LOG": "1",
            "LOG_LEVEL": "DEBUG",
        }
    )
    assert (settings.workers, settings.fault_injection_enabled, settings.metrics_enabled) == (4, True, False)
    assert (settings.model_reload_seconds, settings.worker_class, settings.access_log) == (0.0, "sync", True)
    assert settings.log_level == "debug"
    assert LoadTestSettings.from_env({"HVS_DRIFT": "0.5"}).drift == 0.5


@pytest.mark.parametrize(
    "cls, variable, value, message",
    [
        (ApiSettings, "WORKERS", "two", "must be a whole number"),
        (ApiSettings, "WORKERS", "0", "must be at least 1"),
        (ApiSettings, "PORT", "50.1", "must be a whole number"),
        # A flag that is neither true nor false is refused, not read as false.
        (ApiSettings, "METRICS_ENABLED", "maybe", "must be one of 1, true, yes, on, 0, false, no, off"),
        (ApiSettings, "FAULT_INJECTION_ENABLED", "enabled", "must be one of"),
        (ApiSettings, "INFERENCE_RUNTIME", "onnx", "must be one of auto, sklearn"),
        (ApiSettings, "WORKER_CLASS", "eventlet", "must be one of gevent, sync"),
        (ApiSettings, "MODEL_RELOAD_SECONDS", "-1", "must be a number at least 0"),
        (ApiSettings, "CLIENT_IDLE_SECONDS", "nan", "must be a number"),
        (ApiSettings, "LOG_LEVEL", "verbose", "must be one of debug"),
        (ReceiverSettings, "ALERT_RECEIVER_KEEP", "lots", "must be a whole number"),
        (LoadTestSettings, "HVS_FAULT_SHARE", "30", "must be a number from 0 to 1"),
    ],
)
def test_a_malformed_or_unknown_value_is_refused_naming_the_variable(cls, variable, value, message):
    with pytest.raises(SettingError, match=rf"^{variable}={value!r}: {message}"):
        cls.from_env({variable: value})


def test_every_setting_is_read_from_the_variable_its_name_says():
    for cls in CLASSES:
        for f in dataclasses.fields(cls):
            variable = f.metadata["variable"]
            assert variable.lower().removeprefix("hvs_").removeprefix("alert_receiver_") == f.name or (
                f.name == "heartbeat_max_silence_seconds"
            ), (cls.__name__, f.name, variable)


def test_docs_configuration_holds_the_generated_tables():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == with_tables(page), "docs/configuration.md is out of date: run `make docs`"
    for cls in CLASSES:
        for f in dataclasses.fields(cls):
            assert f"| `{f.metadata['variable']}` |" in markdown_tables()


def test_the_api_stops_at_start_on_a_malformed_setting(tmp_path):
    """As gunicorn's master builds the app: the process exits, and says which variable."""
    result = subprocess.run(
        [sys.executable, "-c", "from hvs_api import create_app; create_app()"],
        env={"PATH": "/usr/bin:/bin", "MLRUNS_DIR": str(tmp_path), "MAX_BATCH_RECORDS": "a thousand"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "SettingError: MAX_BATCH_RECORDS='a thousand': must be a whole number" in result.stderr


def test_the_settings_load_nothing_gevent_must_patch_first_and_nothing_of_the_api():
    # gunicorn.conf.py reads them before gevent's patch: ssl imported before it can break later.
    watched = ("ssl", "socket", "threading", "flask", "hvs_api", "hvs_store")
    assert modules_of_the_api_loaded_by("import hvs_settings", watched) == []


def test_the_receiver_and_the_store_read_their_settings_without_the_api():
    assert modules_of_the_api_loaded_by("import hvs_store, hvs_alert_receiver", ("flask", "numpy", "hvs_api")) == []
