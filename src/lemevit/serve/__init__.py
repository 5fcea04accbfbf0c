"""Trained models as an HTTP service (``lemevit serve``), on LitServe: ``POST /predict`` answers as ``predict``
does, ``GET /info`` gives the model card, ``GET /health`` says whether the workers are ready. Needs the ``serve``
extra (``pip install "lemevit[serve]"``); it sits above the tasks, which never import it."""
from lemevit.serve.server import ServeOptions, serve

__all__ = ["ServeOptions", "serve"]
