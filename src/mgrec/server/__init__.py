"""``mgrec serve``: the HTTP service (FastAPI) over a trained model folder.

* :mod:`mgrec.server.engine`: the loaded model, live events, atomic reloads.
* :mod:`mgrec.server.app`: routes, API keys, limits, metrics, the web page.
* :mod:`mgrec.server.auth`: API keys with roles.
* :mod:`mgrec.server.run`: start uvicorn, watch the model folder.
"""
