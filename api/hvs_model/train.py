"""Train candidate hazard classifiers, log them to MLflow, register the best as ``champion``.

Usage: ``python -m hvs_model.train [--samples N] [--seed S]`` (``make train`` runs it).

Each candidate is one MLflow run in the experiment ``hvs-hazard-classifier`` with its
parameters, test-set metrics (F1, precision and recall on Hazardous, ROC AUC, accuracy),
its single-record inference latency, the Hazardous share of the training data (the
baseline the drift alert compares live traffic against), a confusion-matrix artifact
and the model itself.

The rule that picks the champion: the highest F1 on the Hazardous class wins, except
that any candidate within ``F1_TOLERANCE`` of that F1 and faster on a single record is
preferred, the fastest of those winning. A hundredth of F1 is well inside the noise of a
5,000-record test set, while a slower model costs every request the API serves. The same rule
over the other candidates picks the runner-up, registered with the alias ``challenger``: the
API scores it beside the champion, and the labels that come back say which was right.
"""

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import hvs_store as store
import numpy as np
import pandas as pd
import sklearn
import skops
import skops.io
from hvs_store import BASELINE_METRIC, CHALLENGER_ALIAS, CHAMPION_ALIAS, EXPERIMENT, MODEL_NAME
from sklearn.base import ClassifierMixin, clone
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hvs_model import baseline as feature_baseline
from hvs_model import readings
from hvs_model.features import FEATURE_NAMES, LABELS

F1_TOLERANCE = 0.01

log = logging.getLogger("hvs_model.train")


@dataclass(frozen=True)
class Candidate:
    """A named model configuration to try."""

    name: str
    params: dict
    build: Callable[[int], ClassifierMixin]


CANDIDATES: tuple[Candidate, ...] = (
    Candidate(
        "logistic_regression",
        {"C": 1.0},
        lambda seed: make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)),
    ),
    Candidate(
        "random_forest",
        {"n_estimators": 100, "max_depth": 12},
        lambda seed: RandomForestClassifier(n_estimators=100, max_depth=12, n_jobs=1, random_state=seed),
    ),
    Candidate(
        "hist_gradient_boosting_small",
        {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 15},
        lambda seed: HistGradientBoostingClassifier(
            max_iter=100, learning_rate=0.1, max_leaf_nodes=15, random_state=seed
        ),
    ),
    Candidate(
        "hist_gradient_boosting_large",
        {"max_iter": 300, "learning_rate": 0.05, "max_leaf_nodes": 31},
        lambda seed: HistGradientBoostingClassifier(
            max_iter=300, learning_rate=0.05, max_leaf_nodes=31, random_state=seed
        ),
    ),
)


@dataclass(frozen=True)
class Result:
    """What one candidate's run produced."""

    candidate: Candidate
    run_id: str
    model_uri: str
    f1: float
    latency_ms: float


def single_record_latency_ms(model: ClassifierMixin, x: np.ndarray, calls: int = 200) -> float:
    """Median wall time of ``predict_proba`` on one row, as the API calls it."""
    row = x[:1]
    model.predict_proba(row)  # The first call pays one-off set-up costs.
    timings = []
    for _ in range(calls):
        start = time.perf_counter()
        model.predict_proba(row)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1000.0


def evaluate(model: ClassifierMixin, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Test-set metrics, with Hazardous as the positive class."""
    proba = model.predict_proba(x_test)[:, 1]
    predicted = (proba > 0.5).astype(int)
    return {
        "f1_hazardous": f1_score(y_test, predicted),
        "precision_hazardous": precision_score(y_test, predicted, zero_division=0),
        "recall_hazardous": recall_score(y_test, predicted),
        "roc_auc": roc_auc_score(y_test, proba),
        "accuracy": accuracy_score(y_test, predicted),
    }


def pick_champion(results: list[Result]) -> Result:
    """Apply the documented rule: best F1, or a faster model within ``F1_TOLERANCE`` of it."""
    best_f1 = max(r.f1 for r in results)
    close = [r for r in results if r.f1 >= best_f1 - F1_TOLERANCE]
    return min(close, key=lambda r: r.latency_ms)


def _trusted_types(model: ClassifierMixin) -> list[str]:
    # These are our own freshly trained models, so every type skops finds in them is trusted.
    return skops.io.get_untrusted_types(data=skops.io.dumps(model))


def _experiment_id(client) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(EXPERIMENT, artifact_location=store.ARTIFACT_ROOT)


def train(samples: int = 20_000, seed: int = 42, candidates: tuple[Candidate, ...] = CANDIDATES) -> Result:
    """Run the candidates, register the champion and return its result."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    store.mlruns_dir().mkdir(parents=True, exist_ok=True)
    client = store.client()
    experiment_id = _experiment_id(client)

    x, y = readings.generate(samples, seed=seed)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    baseline = float(y_train.mean())
    inputs = feature_baseline.from_training(x_train).as_dict()
    # The signature names the columns for MLflow's UI and `mlflow models serve`.
    signature = infer_signature(pd.DataFrame(x_test[:5], columns=FEATURE_NAMES), np.zeros(5, dtype=int))
    requirements = [f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}"]

    results = []
    for candidate in candidates:
        model = clone(candidate.build(seed)).fit(x_train, y_train)
        metrics = evaluate(model, x_test, y_test)
        metrics["single_record_latency_ms"] = single_record_latency_ms(model, x_test)
        metrics[BASELINE_METRIC] = baseline
        tn, fp, fn, tp = confusion_matrix(y_test, (model.predict_proba(x_test)[:, 1] > 0.5).astype(int)).ravel()
        with mlflow.start_run(experiment_id=experiment_id, run_name=candidate.name) as run:
            mlflow.log_params({"model": candidate.name, "samples": samples, "seed": seed, **candidate.params})
            mlflow.log_metrics(metrics)
            mlflow.log_dict(
                {
                    "labels": [LABELS[0], LABELS[1]],
                    "rows_are": "true label",
                    "columns_are": "predicted label",
                    "matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
                },
                "confusion_matrix.json",
            )
            # Each feature's training distribution: the API counts live records in its bins.
            mlflow.log_dict(inputs, feature_baseline.ARTIFACT)
            mlflow.set_tag("features", ",".join(FEATURE_NAMES))
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=signature,
                # Explicit requirements skip MLflow's slow dependency inference.
                pip_requirements=requirements,
                skops_trusted_types=_trusted_types(model),
            )
        result = Result(
            candidate, run.info.run_id, info.model_uri, metrics["f1_hazardous"], metrics["single_record_latency_ms"]
        )
        results.append(result)
        log.info(
            "%-30s F1=%.4f ROC AUC=%.4f recall=%.4f latency=%.3f ms run=%s",
            candidate.name,
            metrics["f1_hazardous"],
            metrics["roc_auc"],
            metrics["recall_hazardous"],
            metrics["single_record_latency_ms"],
            run.info.run_id,
        )

    champion = pick_champion(results)
    version = mlflow.register_model(champion.model_uri, MODEL_NAME)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION_ALIAS, version.version)
    rule = f"best F1 on Hazardous; a faster candidate within {F1_TOLERANCE} of it wins"
    client.set_model_version_tag(MODEL_NAME, version.version, "selection_rule", rule)
    log.info("champion: %s, registered as %s version %s", champion.candidate.name, MODEL_NAME, version.version)
    _register_challenger(client, [r for r in results if r is not champion])
    return champion


def _register_challenger(client, others: list[Result]) -> None:
    """The runner-up gets the challenger alias; with no other candidate, the alias goes, so that
    the API never compares the new champion with a model of an older training."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not others:
        try:
            client.delete_registered_model_alias(MODEL_NAME, CHALLENGER_ALIAS)
        except MlflowException:
            pass  # There was none.
        return
    runner_up = pick_champion(others)
    version = mlflow.register_model(runner_up.model_uri, MODEL_NAME)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER_ALIAS, version.version)
    log.info("challenger: %s, registered as %s version %s", runner_up.candidate.name, MODEL_NAME, version.version)


def registered_champion():
    """The champion's model version in the store, or None when there is none yet."""
    from mlflow.exceptions import MlflowException

    if not (store.mlruns_dir() / store.DB_FILE).exists():
        return None
    try:
        return store.client().get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    except MlflowException:
        return None


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, train, and print the best run id last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000, help="readings to generate (default 20000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument(
        "--candidates",
        nargs="+",
        choices=[c.name for c in CANDIDATES],
        default=[c.name for c in CANDIDATES],
        help="train only these candidates (default: all)",
    )
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing when a champion is already registered (the Compose trainer's first-start mode)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.if_missing and (existing := registered_champion()) is not None:
        print(f"{MODEL_NAME}@{CHAMPION_ALIAS} is version {existing.version} (run {existing.run_id}); not training")
        return
    chosen = tuple(c for c in CANDIDATES if c.name in args.candidates)
    champion = train(samples=args.samples, seed=args.seed, candidates=chosen)
    print(f"BEST_MLFLOW_RUN_ID={champion.run_id}")


if __name__ == "__main__":
    main()
