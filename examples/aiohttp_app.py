"""Sending tasks from an aiohttp app, with the scheduler embedded through ``cleanup_ctx``.

pip install aiohttp
VECNA_BROKER=redis://127.0.0.1:6379/0 vecna-async worker examples.aiohttp_app:tasks
VECNA_BROKER=redis://127.0.0.1:6379/0 python -m aiohttp.web -P 8080 examples.aiohttp_app:make_app
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from vecna_async import Config, Server

tasks = Server(Config.from_env())


@tasks.task(name="resize_image")
async def resize_image(url: str, width: int) -> str:
    return f"{url}?w={width}"


async def vecna_context(app: web.Application) -> AsyncIterator[None]:
    async with tasks, tasks.scheduler():
        yield


async def resize(request: web.Request) -> web.Response:
    result = await resize_image.send(request.query["url"], int(request.query.get("width", "200")))
    resized = await result.get(timeout=10)
    return web.json_response({"task_id": result.task_id, "resized": resized})


def make_app(argv: list[str] | None = None) -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(vecna_context)
    app.router.add_get("/resize", resize)
    return app
