"""The HTTP door: the REST API under ``/api``, the web dashboard and ``/metrics``.

One ASGI app (``app.web.app.create_app``) on the same settings, database and Redis as the CLI;
every write goes through the service layer, as the CLI's do.
"""
