"""The calc API as a typical user writes it: FastAPI, a pydantic body, uvicorn defaults.

The baseline that `bench/throughput.py` measures calc v10 against."""

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
