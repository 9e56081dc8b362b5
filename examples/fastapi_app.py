"""Sending tasks from a FastAPI app, with the scheduler embedded in its lifespan.

pip install fastapi uvicorn
VECNA_BROKER=redis://127.0.0.1:6379/0 vecna-async worker examples.fastapi_app:tasks --no-scheduler
VECNA_BROKER=redis://127.0.0.1:6379/0 uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI

from vecna_async import Config, Server, Signature

tasks = Server(Config.from_env())


@tasks.task(name="send_welcome_email")
async def send_welcome_email(address: str) -> str:
    return f"welcome mail sent to {address}"


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # One Server per process: its connection pools and one result listener serve every request.
    # The scheduler promotes delayed tasks and fires periodic ones; any number of processes may
    # run one, they share the work.
    async with tasks, tasks.scheduler():
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/signup")
async def signup(address: str) -> dict[str, str]:
    result = await send_welcome_email.send(address)
    return {"task_id": result.task_id}


@app.post("/signup-later")
async def signup_later(address: str, seconds: float = 60) -> dict[str, str]:
    eta = datetime.now(UTC) + timedelta(seconds=seconds)
    sig = Signature("send_welcome_email", args=[address], eta=eta)
    result = await tasks.send_task(sig)
    return {"task_id": result.task_id}


@app.get("/tasks/{task_id}")
async def task_status(task_id: str, wait: float = 0) -> dict[str, object]:
    result = tasks.result(task_id)
    if wait:
        value = await result.get(timeout=wait)
        return {"task_id": task_id, "state": "SUCCESS", "value": value}
    state = await result.get_state()
    return {"task_id": task_id, "state": state.state if state else None}
