"""The inference runtime: treelite where it answers as scikit-learn does, scikit-learn otherwise,
and always the same answers."""

import sys

import numpy as np
import pytest
from hvs_model import readings, train
from hvs_model.features import FEATURES
from hvs_settings import ApiSettings, SettingError
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from hvs_api import runtime

TREE_CANDIDATES = [c for c in train.CANDIDATES if c.name != "logistic_regression"]


@pytest.fixture(scope="module")
def training_data():
    return readings.generate(4_000, seed=7)


def fitted(candidate: train.Candidate, training_data):
    return candidate.build(7).fit(*training_data)


def assert_same_answers(chosen: runtime.Runtime, estimator, rows: np.ndarray) -> None:
    expected = estimator.predict_proba(rows)[:, 1]
    got = chosen.predict(rows)
    assert np.max(np.abs(got - expected)) <= runtime.TOLERANCE
    assert np.array_equal(got > 0.5, expected > 0.5)


@pytest.mark.parametrize("candidate", TREE_CANDIDATES, ids=lambda c: c.name)
def test_every_tree_candidate_is_served_by_treelite_with_scikit_learns_answers(candidate, training_data):
    estimator = fitted(candidate, training_data)
    chosen = runtime.choose(estimator)
    assert (chosen.name, chosen.fallback_reason) == ("treelite", None)
    assert chosen.largest_difference <= runtime.TOLERANCE and chosen.checked_rows > 2_000
    # On the reference batch the check used, and on records it never saw.
    assert_same_answers(chosen, estimator, runtime.reference_batch(estimator))
    assert_same_answers(chosen, estimator, readings.generate(5_000, seed=99, drift=0.3)[0])
    assert chosen.predict(np.asarray([[50.0, 3.0, 200.0, 40.0, 100.0]])).shape == (1,)


def neighbourhood_in(column: set[float], t: float) -> bool:
    """A threshold and the values just either side of it, in float64 and in the float32 the
    trees see, are all in a column of the batch."""
    rounded = np.float32(t)
    return {
        t,
        np.nextafter(t, -np.inf),
        np.nextafter(t, np.inf),
        float(np.nextafter(rounded, np.float32(-np.inf))),
        float(np.nextafter(rounded, np.float32(np.inf))),
    } <= column


def test_the_reference_batch_holds_records_range_limits_and_every_thresholds_neighbourhood(training_data):
    estimator = fitted(TREE_CANDIDATES[0], training_data)
    rows = runtime.reference_batch(estimator)
    assert np.array_equal(rows, runtime.reference_batch(estimator)), "not deterministic"
    for index, feature in enumerate(FEATURES):
        assert feature.minimum in rows[:, index] and feature.maximum in rows[:, index]
    for index, thresholds in runtime.split_thresholds(estimator).items():
        column = set(rows[:, index].tolist())

        covered = [t for t in thresholds if neighbourhood_in(column, t)]
        # Every threshold, or as many as the cap allows, from the lowest to the highest.
        assert len(covered) >= min(len(thresholds), runtime.THRESHOLDS_PER_FEATURE)
        assert covered[0] == thresholds[0] and covered[-1] == thresholds[-1]


def test_the_check_catches_input_fed_unlike_scikit_learn(training_data, monkeypatch):
    """A forest rounds its input to float32: a treelite path that skipped the rounding would send
    records at a threshold down the other branch, and must not serve."""
    forest = fitted(next(c for c in TREE_CANDIDATES if c.name == "random_forest"), training_data)
    unrounded = runtime._treelite_predictor
    monkeypatch.setattr(runtime, "_treelite_predictor", lambda estimator, rounds: unrounded(estimator, False))
    chosen = runtime.choose(forest)
    assert (chosen.name, chosen.fallback_reason) == ("sklearn", "check_failed")
    assert "label(s) differ" in chosen.detail
    assert_same_answers(chosen, forest, runtime.reference_batch(forest))


def test_a_model_whose_check_fails_is_served_by_scikit_learn(training_data):
    """treelite imports a HistGradientBoosting model with a categorical feature but answers
    differently: the check finds it."""
    x, y = training_data
    x = x.copy()
    x[:, 3] = np.floor(x[:, 3] / 10)
    estimator = HistGradientBoostingClassifier(max_iter=20, categorical_features=[3], random_state=7).fit(x, y)
    chosen = runtime.choose(estimator)
    assert (chosen.name, chosen.fallback_reason) == ("sklearn", "check_failed")
    assert_same_answers(chosen, estimator, x[:500])


def test_a_model_treelite_refuses_is_served_by_scikit_learn(training_data):
    estimator = GradientBoostingClassifier(n_estimators=10, init=LogisticRegression(), random_state=7)
    estimator.fit(*training_data)
    chosen = runtime.choose(estimator)
    assert (chosen.name, chosen.fallback_reason) == ("sklearn", "import_failed")
    assert "NotImplementedError" in chosen.detail
    assert_same_answers(chosen, estimator, training_data[0][:500])


def test_the_logistic_regression_the_setting_and_a_missing_package_fall_back_with_their_reason(
    training_data, monkeypatch
):
    pipeline = fitted(next(c for c in train.CANDIDATES if c.name == "logistic_regression"), training_data)
    assert runtime.choose(pipeline).fallback_reason == "not_a_tree_ensemble"
    forest = fitted(TREE_CANDIDATES[0], training_data)
    assert runtime.choose(forest, "sklearn").fallback_reason == "forced_by_setting"
    monkeypatch.setitem(sys.modules, "treelite", None)  # import treelite raises ImportError
    chosen = runtime.choose(forest)
    assert (chosen.name, chosen.fallback_reason) == ("sklearn", "treelite_unavailable")
    assert_same_answers(chosen, forest, training_data[0][:200])


def test_every_reason_is_a_bounded_label_value():
    assert all(reason.isidentifier() and reason.islower() for reason in runtime.FALLBACK_REASONS)
    assert runtime.RUNTIMES == ("treelite", "sklearn")


def test_the_setting_is_checked_and_reaches_the_loaded_model(session_store, make_app, monkeypatch):
    with pytest.raises(SettingError, match="INFERENCE_RUNTIME='onnx': must be one of auto, sklearn"):
        ApiSettings.from_env({"INFERENCE_RUNTIME": "onnx"})
    runtime_of = lambda env: ApiSettings.from_env(env).inference_runtime  # noqa: E731
    assert runtime_of({}) == "auto" and runtime_of({"INFERENCE_RUNTIME": " SKLearn "}) == "sklearn"
    monkeypatch.setenv("INFERENCE_RUNTIME", "sklearn")
    client = make_app({"TESTING": True}).test_client()
    health = client.get("/health").get_json()
    metrics = client.get("/metrics").get_data(as_text=True)
    assert (health["model"]["runtime"], health["model"]["runtime_fallback_reason"]) == ("sklearn", "forced_by_setting")
    assert 'hvs_model_runtime_info{runtime="sklearn"} 1.0' in metrics
    assert 'hvs_model_runtime_info{runtime="treelite"} 0.0' in metrics
    assert 'hvs_model_runtime_fallback_info{reason="forced_by_setting"} 1.0' in metrics
    assert 'hvs_model_runtime_fallback_info{reason="check_failed"} 0.0' in metrics


def test_the_champion_says_which_runtime_serves_it(champion, client):
    client.get("/health")
    metrics = client.get("/metrics").get_data(as_text=True)
    other = next(r for r in runtime.RUNTIMES if r != champion.runtime.name)
    assert f'hvs_model_runtime_info{{runtime="{champion.runtime.name}"}} 1.0' in metrics
    assert f'hvs_model_runtime_info{{runtime="{other}"}} 0.0' in metrics
    for reason in runtime.FALLBACK_REASONS:
        value = int(reason == champion.runtime.fallback_reason)
        assert f'hvs_model_runtime_fallback_info{{reason="{reason}"}} {value}.0' in metrics
    # The registered champion is a tree ensemble (make train picks one on this data): treelite.
    assert champion.runtime.name == "treelite", champion.runtime.detail
