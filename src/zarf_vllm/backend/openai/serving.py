"""vLLM's own OpenAI serving layer, built on the backend's AsyncLLM.

vLLM's `init_app_state` builds the serving objects (models, renderer, chat, completions,
embeddings) exactly as `vllm serve` does, from a namespace its own argument parser fills with
its defaults; only the model's path and served name come from us. The routes are vLLM's
routers for the endpoints this backend offers, and errors go through vLLM's exception handlers,
so request validation and the error bodies are vLLM's, unchanged.
"""

from __future__ import annotations

import asyncio
from argparse import Namespace
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI

from zarf_vllm.backend.adapters import ServedAdapter
from zarf_vllm.backend.openai.observe import ObservedEngine


def frontend_args(
    model_path: str, served_name: str, adapters: Sequence[ServedAdapter] = ()
) -> Namespace:
    """vLLM's server arguments at their defaults, naming our model and, as vLLM's static
    `--lora-modules`, each adapter (a model name of its own)."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    # Docs off: the Swagger page loads its scripts from the internet, which a pod cannot reach.
    argv = ["--model", model_path, "--served-model-name", served_name, "--disable-fastapi-docs"]
    if adapters:
        # In the manifest's order: vLLM numbers them 1, 2, ... as ServedAdapter.lora_id does.
        argv += ["--lora-modules", *(f"{a.name}={a.path}" for a in adapters)]
    return parser.parse_args(argv)


async def build_app(
    llm: Any, model_path: str, served_name: str, adapters: Sequence[ServedAdapter] = ()
) -> FastAPI:
    """The FastAPI app of vLLM's OpenAI endpoints for this model's tasks, ready to serve."""
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.serve.exception_handling.handlers.http import (
        http_exception_handler,
    )
    from vllm.entrypoints.serve.exception_handling.register import init_exception_handler

    # vLLM's parser is large to build; off the event loop, which keeps answering probes.
    args = await asyncio.to_thread(frontend_args, model_path, served_name, adapters)
    engine = ObservedEngine(llm)
    tasks = tuple(await llm.get_supported_tasks())
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    for router in _routers(tasks):
        app.include_router(router)
    init_exception_handler(app)
    # Unknown paths and methods are raised by Starlette's router, not FastAPI's: the same
    # handler gives them the OpenAI error form too.
    app.exception_handler(StarletteHTTPException)(http_exception_handler)
    await init_app_state(engine, app.state, args, tasks)  # type: ignore[arg-type]
    _name_adapters_in_404s(app.state, adapters)
    return app


def _name_adapters_in_404s(state: Any, adapters: Sequence[ServedAdapter]) -> None:
    """vLLM answers an unknown model name with 404 "... Valid aliases: <base model>.", which
    leaves out the adapters a client may pick. Each serving object's model check (vLLM's own,
    still deciding) gets the adapters' names appended to that message."""
    if not adapters:
        return
    names = ", ".join(a.name for a in adapters)
    for serving in list(state._state.values()):
        check = getattr(serving, "_check_model", None)
        if check is not None:
            serving._check_model = _with_adapter_names(check, names)


def _with_adapter_names(check: Callable[[Any], Awaitable[Any]], names: str) -> Any:
    async def checked(request: Any) -> Any:
        error = await check(request)
        if error is not None and error.error.code == HTTPStatus.NOT_FOUND:
            error.error.message += f" LoRA adapters: {names}."
        return error

    return checked


def _routers(tasks: tuple[str, ...]) -> list[Any]:
    from vllm.entrypoints.openai.models.api_router import router as models

    routers = [models]
    if "generate" in tasks:
        from vllm.entrypoints.openai.chat_completion.api_router import router as chat
        from vllm.entrypoints.openai.completion.api_router import router as completions

        routers += [chat, completions]
    if "embed" in tasks:
        from vllm.entrypoints.pooling.embed.api_router import router as embeddings

        routers.append(embeddings)
    return routers
