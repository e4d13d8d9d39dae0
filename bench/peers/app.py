"""The calc API as a typical user writes it for any ASGI server: FastAPI, a pydantic body.

The same API as `bench/plain_app.py` (the project's uvicorn baseline), self-contained so a
server started in this directory finds it as `app:app`, the way a container image with
`WORKDIR /app` would: `uvicorn app:app`, `hypercorn app:app`, `granian --interface asgi
app:app`, `gunicorn -k uvicorn.workers.UvicornWorker app:app`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class SumRequest(BaseModel):
    numbers: list[Any]


@app.post("/sum")
async def calc_sum(body: SumRequest) -> dict[str, Any]:
    await asyncio.sleep(0.1)
    numbers = [n for n in body.numbers if isinstance(n, int | float) and not isinstance(n, bool)]
    return {"result": sum(numbers)}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "healthy"}
