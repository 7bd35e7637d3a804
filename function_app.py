"""The Azure Functions app (Python v2 programming model): Flowcraft's functions, registered from a Blueprint.

Every function (job queue, poison queue, reconciler timer, HTTP routes under ``/api``) is declared in
``flowcraft_functions`` as a ``func.Blueprint``, which another Function App can register the same way. Add
functions of your own below.
"""

from __future__ import annotations

import azure.functions as func

from flowcraft_functions import LazyServices, blueprint, services

__all__ = ["LazyServices", "app", "services"]

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(blueprint)
