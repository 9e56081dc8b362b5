"""A FastAPI route that streams a task's progress to the browser as server-sent events.

pip install fastapi uvicorn
VECNA_BROKER=redis://127.0.0.1:6379/0 vecna-async worker examples.progress_sse:tasks
VECNA_BROKER=redis://127.0.0.1:6379/0 uvicorn examples.progress_sse:app
curl -X POST 'localhost:8000/reports?pages=3'          # -> {"task_id": "..."}
curl -N localhost:8000/reports/<task_id>/events        # data: {"page": 1, "of": 3} ...

In a page: ``new EventSource("/reports/" + id + "/events").onmessage = e => show(e.data)``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from vecna_async import Config, Context, Server, TaskFailed

tasks = Server(Config.from_env())


@tasks.task(name="build_report", timeout=60.0)
async def build_report(ctx: Context, pages: int) -> str:
    for page in range(1, pages + 1):
        await anyio.sleep(0.05)  # the work of one page
        await ctx.report_progress({"page": page, "of": pages})
    return f"report of {pages} pages"


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    async with tasks:
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/reports")
async def start_report(pages: int = 3) -> dict[str, str]:
    result = await build_report.send(pages)
    return {"task_id": result.task_id}


def _event(data: Any, event: str = "") -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


@app.get("/reports/{task_id}/events")
async def report_events(task_id: str) -> StreamingResponse:
    result = tasks.result(task_id)

    async def events() -> AsyncIterator[str]:
        async for value in result.progress_updates():  # each report, until the task ends
            yield _event(value)
        try:
            yield _event(await result.get(timeout=5), event="done")
        except TaskFailed as exc:
            yield _event(exc.error, event="failed")

    return StreamingResponse(events(), media_type="text/event-stream")
