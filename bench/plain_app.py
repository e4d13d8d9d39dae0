"""The calc API as a typical user writes it: FastAPI, a pydantic body, uvicorn defaults.

The baseline that `bench/throughput.py` measures calc v10 against; the app itself lives in
`bench/peers/app.py`, which every peer server serves too."""

from bench.peers.app import app

__all__ = ["app"]
