"""``python -m hvs_api.train``, the training command of earlier versions of the lab, kept so
that it still trains: the training step is ``hvs_model.train`` (``python -m hvs_model.train``)."""

from hvs_model.train import main

if __name__ == "__main__":
    main()
