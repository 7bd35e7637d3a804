"""Where the sample nodes get their completions: the offline stand-in by default, or a model you plug in.

By default every prompt goes to :func:`workflows.fake_llm.complete`, which is deterministic and never
touches the network. There are two ways to use a real model instead:

1. In code, before the runtime starts (for example at the top of ``function_app.py``)::

       from workflows.llm import set_completion_function
       set_completion_function(my_complete)   # (prompt: str) -> str, sync or async

2. By setting, in the environment or ``local.settings.json`` Values::

       FLOWCRAFT_LLM_COMPLETION=my_package.my_module:my_complete

   The function is imported on the first completion. An explicit ``set_completion_function`` wins.

A sketch of an Azure OpenAI completion function (needs ``pip install openai``; not part of this app,
and nothing here imports or calls it)::

    import os
    from openai import AsyncAzureOpenAI

    _client = AsyncAzureOpenAI(
        azure_endpoint=os.environ["AZURE_OPENAI_ENDPOINT"],
        api_key=os.environ["AZURE_OPENAI_API_KEY"],
        api_version="2024-06-01",
    )

    async def azure_openai_complete(prompt: str) -> str:
        response = await _client.chat.completions.create(
            model=os.environ["AZURE_OPENAI_DEPLOYMENT"],
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
        )
        return response.choices[0].message.content or ""

Sync functions run in a worker thread so that a blocking client cannot stall the event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from . import fake_llm

CompletionFunction: TypeAlias = Callable[[str], "str | Awaitable[str]"]

COMPLETION_ENV_VAR = "FLOWCRAFT_LLM_COMPLETION"

_completion: CompletionFunction | None = None


def set_completion_function(fn: CompletionFunction | None) -> None:
    """Use ``fn`` for every completion from now on; ``None`` goes back to the environment or the fake."""
    global _completion
    _completion = fn


def _load_from_env(spec: str) -> CompletionFunction:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{COMPLETION_ENV_VAR} must look like 'package.module:function', got {spec!r}")
    fn: Any = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise ValueError(f"{COMPLETION_ENV_VAR}={spec!r} does not name a callable")
    completion: CompletionFunction = fn
    return completion


def get_completion_function() -> CompletionFunction:
    """The function in use: the one set in code, else the one named in the environment, else the fake."""
    if _completion is not None:
        return _completion
    spec = os.environ.get(COMPLETION_ENV_VAR, "").strip()
    if spec:
        return _load_from_env(spec)
    return fake_llm.complete


async def call_llm(prompt: str) -> str:
    """Complete a prompt with the configured function and return the text."""
    fn = get_completion_function()
    if fn is fake_llm.complete:
        return fake_llm.complete(prompt)
    if inspect.iscoroutinefunction(fn):
        result: Any = await fn(prompt)
    else:
        result = await asyncio.to_thread(fn, prompt)
        if inspect.isawaitable(result):
            result = await result
    return "" if result is None else str(result)
