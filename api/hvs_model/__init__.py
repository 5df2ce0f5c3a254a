"""The hazard model, apart from serving: the sensor features it reads (``features``), the
synthetic readings it is trained and load-tested on (``readings``), and its training and
registration in MLflow (``train``, run as ``python -m hvs_model.train``).

Nothing here imports Flask or the API: the trainer, the locustfile and the benchmarks load
this package alone, and the API (``hvs_api``) imports its features and its model from here.
"""
