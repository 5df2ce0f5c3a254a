"""The alert receiver moved to its own package, ``hvs_alert_receiver``, which imports nothing of
the API (no Flask, numpy or MLflow). This name stays so that ``python -m hvs_api.alert_receiver``
keeps working for anyone who ran it so."""

from hvs_alert_receiver import *  # noqa: F403
from hvs_alert_receiver import main

if __name__ == "__main__":
    main()
