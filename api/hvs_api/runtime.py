"""Which code computes the model's probabilities: treelite's interpreter or scikit-learn.

scikit-learn predicts one record with a tree ensemble by calling into compiled code once per
tree, from Python: for the HistGradientBoosting champion that is over half of a request's CPU.
treelite (DMLC) imports the fitted ensemble and walks every tree in one call of its built-in
interpreter, with no compiler. It is used only when it is proven to answer as scikit-learn does:
before it serves, its probabilities on a fixed reference batch (generated records, each
feature's range limits, and values at and beside every split threshold of the model) must be
within ``TOLERANCE`` of the estimator's, with not one label different. Otherwise scikit-learn
serves, and the reason (one of ``FALLBACK_REASONS``) is logged and published as a metric.

The estimator stays the source of truth: the treelite model is built from it in memory each
time the model is loaded, and nothing new is stored or registered.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hvs_model import readings
from hvs_model.features import FEATURES

RUNTIMES = ("treelite", "sklearn")
# Why scikit-learn serves a model (a fixed set: they are label values).
FALLBACK_REASONS = (
    "forced_by_setting",  # INFERENCE_RUNTIME=sklearn
    "not_a_tree_ensemble",  # e.g. the logistic-regression pipeline
    "treelite_unavailable",  # the package is not installed
    "import_failed",  # treelite refused the fitted ensemble
    "check_failed",  # treelite's answers differ from scikit-learn's on the reference batch
)

TOLERANCE = 1e-9
# The reference batch: generated records, plus at most this many split thresholds per feature
# (evenly chosen), each tried at, just below and just above the threshold.
REFERENCE_RECORDS = 2_000
THRESHOLDS_PER_FEATURE = 600
REFERENCE_SEED = 20_241


@dataclass(frozen=True)
class Runtime:
    """The runtime chosen for one loaded model, and what choosing it cost."""

    name: str
    predict: Callable[[np.ndarray], np.ndarray]  # rows -> probability of the Hazardous class
    fallback_reason: str | None = None
    detail: str = ""  # for the log only, never a label
    build_seconds: float = 0.0
    check_seconds: float = 0.0
    checked_rows: int = 0
    largest_difference: float | None = None


def sklearn_runtime(estimator, reason: str | None = None, detail: str = "") -> Runtime:
    return Runtime("sklearn", lambda x: estimator.predict_proba(x)[:, 1], reason, detail)


def _tree_ensemble_kind(estimator) -> str | None:
    """ "float32" for ensembles of scikit-learn's decision trees (they round their input to float32
    before comparing it with thresholds), "float64" for HistGradientBoosting (it does not), and
    None for anything treelite is not asked to import."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )

    if isinstance(estimator, HistGradientBoostingClassifier):
        return "float64"
    if isinstance(estimator, RandomForestClassifier | ExtraTreesClassifier | GradientBoostingClassifier):
        return "float32"
    return None


def split_thresholds(estimator) -> dict[int, np.ndarray]:
    """Feature index -> the distinct thresholds the ensemble's splits compare it with."""
    found: dict[int, list[np.ndarray]] = {}
    if hasattr(estimator, "_predictors"):  # HistGradientBoosting: one predictor per iteration
        for (predictor,) in estimator._predictors:
            nodes = predictor.nodes[~predictor.nodes["is_leaf"].astype(bool)]
            for feature in np.unique(nodes["feature_idx"]):
                found.setdefault(int(feature), []).append(nodes["num_threshold"][nodes["feature_idx"] == feature])
    else:
        trees = np.ravel(estimator.estimators_)
        for tree in trees:
            split = tree.tree_.feature >= 0
            for feature in np.unique(tree.tree_.feature[split]):
                found.setdefault(int(feature), []).append(tree.tree_.threshold[tree.tree_.feature == feature])
    return {feature: np.unique(np.concatenate(values)) for feature, values in found.items()}


def reference_batch(estimator) -> np.ndarray:
    """The rows the check compares on, deterministic for a given model."""
    records, _ = readings.generate(REFERENCE_RECORDS, seed=REFERENCE_SEED)
    rows = [records]
    # Each feature at its range limits, the other features as in a generated record.
    for index, feature in enumerate(FEATURES):
        for limit in (feature.minimum, feature.maximum):
            row = records[index : index + 1].copy()
            row[0, index] = limit
            rows.append(row)
    # Each feature at a threshold and the nearest values either side of it, in float64 and, for
    # trees that round their input, in float32: where a rounding difference would send a record
    # down the other branch (a threshold halfway between two float32 values rounds to either).
    rounds_to_float32 = _tree_ensemble_kind(estimator) == "float32"
    for feature, thresholds in sorted(split_thresholds(estimator).items()):
        if len(thresholds) > THRESHOLDS_PER_FEATURE:
            thresholds = thresholds[np.linspace(0, len(thresholds) - 1, THRESHOLDS_PER_FEATURE).astype(int)]
        values = []
        for kind in (np.float64, np.float32) if rounds_to_float32 else (np.float64,):
            at = thresholds.astype(kind)
            values += [at, np.nextafter(at, kind(-np.inf)), np.nextafter(at, kind(np.inf))]
        values = np.concatenate([v.astype(np.float64) for v in values])
        block = records[np.arange(len(values)) % len(records)].copy()
        block[:, feature] = values
        rows.append(block)
    return np.concatenate(rows)


def _treelite_predictor(estimator, rounds_to_float32: bool) -> Callable[[np.ndarray], np.ndarray]:
    import ctypes

    import treelite.sklearn
    from treelite.core import _LIB, _check_call
    from treelite.gtil.gtil import GTILConfig

    model = treelite.sklearn.import_model(estimator)
    if (model.input_type, model.output_type) != ("float64", "float64"):
        raise TypeError(f"treelite model of {model.input_type} in, {model.output_type} out; float64 expected")
    # treelite.gtil.predict builds a configuration, asks the model its types and its output
    # shape, and validates its arguments on every call: more than half of a one-record call,
    # and the part that suffers most from caches the HTTP stack has cooled. Done once here; each
    # call then makes treelite's documented C call, TreeliteGTILPredict. One thread: the API's
    # concurrency is its workers, not the model call. The check in choose() proves this path.
    config = GTILConfig(nthread=1, predict_type="default")
    shape, dimensions = ctypes.POINTER(ctypes.c_uint64)(), ctypes.c_uint64()
    _check_call(
        _LIB.TreeliteGTILGetOutputShape(
            model.handle, ctypes.c_uint64(1), config.handle, ctypes.byref(shape), ctypes.byref(dimensions)
        )
    )
    per_row = tuple(int(n) for n in np.ctypeslib.as_array(shape, shape=(dimensions.value,))[1:])
    doubles, input_type = ctypes.POINTER(ctypes.c_double), ctypes.c_char_p(b"float64")

    def predict(x: np.ndarray) -> np.ndarray:
        if rounds_to_float32:
            # As scikit-learn's trees see the input: rounded to float32, compared in float64.
            x = np.ascontiguousarray(np.asarray(x, dtype=np.float32), dtype=np.float64)
        else:
            x = np.ascontiguousarray(x, dtype=np.float64)
        # (rows, targets, classes), zeroed as treelite's own wrapper gives it: the last class
        # column is the Hazardous probability for a forest's two columns and a boosted model's
        # single (already sigmoid) column alike.
        out = np.zeros((len(x), *per_row))
        _check_call(
            _LIB.TreeliteGTILPredict(
                model.handle,
                x.ctypes.data_as(doubles),
                input_type,
                ctypes.c_uint64(len(x)),
                out.ctypes.data_as(doubles),
                config.handle,
            )
        )
        return out[:, 0, -1]

    return predict  # its closure keeps the model and the configuration their handles belong to


def choose(estimator, setting: str = "auto") -> Runtime:
    """The runtime for ``estimator``: treelite when it is allowed, can import the model and
    answers as scikit-learn does on the reference batch; scikit-learn otherwise."""
    if setting == "sklearn":
        return sklearn_runtime(estimator, "forced_by_setting", "INFERENCE_RUNTIME=sklearn")
    kind = _tree_ensemble_kind(estimator)
    if kind is None:
        return sklearn_runtime(estimator, "not_a_tree_ensemble", type(estimator).__name__)
    try:
        import treelite  # noqa: F401
    except ImportError as exc:
        return sklearn_runtime(estimator, "treelite_unavailable", str(exc))
    start = time.perf_counter()
    try:
        predict = _treelite_predictor(estimator, kind == "float32")
    except Exception as exc:  # treelite refuses what it cannot represent; the API must still serve
        return sklearn_runtime(estimator, "import_failed", f"{type(exc).__name__}: {exc}")
    built = time.perf_counter()
    rows = reference_batch(estimator)
    expected = estimator.predict_proba(rows)[:, 1]
    try:
        got = predict(rows)
    except Exception as exc:
        return sklearn_runtime(estimator, "check_failed", f"treelite could not predict: {type(exc).__name__}: {exc}")
    checked = time.perf_counter()
    difference = float(np.max(np.abs(got - expected)))
    labels_differ = int(np.count_nonzero((got > 0.5) != (expected > 0.5)))
    if not difference <= TOLERANCE or labels_differ:
        detail = f"largest probability difference {difference:.3g} on {len(rows)} rows, {labels_differ} label(s) differ"
        return sklearn_runtime(estimator, "check_failed", detail)
    return Runtime("treelite", predict, None, "", built - start, checked - built, len(rows), difference)


def describe(runtime: Runtime) -> str:
    """One log line on the choice and what it cost."""
    if runtime.name == "treelite":
        return (
            f"inference runtime treelite: built in {runtime.build_seconds * 1000:.1f} ms, checked against "
            f"scikit-learn on {runtime.checked_rows} rows in {runtime.check_seconds * 1000:.0f} ms "
            f"(largest probability difference {runtime.largest_difference:.2g}, no label different)"
        )
    return f"inference runtime sklearn ({runtime.fallback_reason}: {runtime.detail})"
