"""graceful: building blocks that let any ASGI service on uvicorn shut down without
dropping a request or losing a write.

- `ShutdownConfig`: the switches and time limits of the shutdown phases.
- `Lifecycle`: shared state (draining, in-flight, last activity, the shutdown deadline).
- `GracefulMiddleware`: readiness-relevant bookkeeping and `Connection: close` while draining.
- `GracefulServer`: a uvicorn server whose SIGTERM runs delay -> close -> drain -> app shutdown.
- `TaskRegistry`: background tasks with hard references, awaited with a deadline.
- `BatchWriter`: buffers items, writes them in batches, flushes with retries at shutdown.
- `guarded_protocol(...)`: request-head size and time limits for uvicorn's httptools.
- `serve(app, lifecycle, **uvicorn_options)`: all of the above around any ASGI app.
"""

from graceful.batcher import BatchWriter, PermanentWriteError, RetryPolicy
from graceful.config import ShutdownConfig, budget_problems
from graceful.lifecycle import Lifecycle, Phase
from graceful.middleware import GracefulMiddleware
from graceful.protocol import GuardedHttpToolsProtocol, guarded_protocol
from graceful.run import build_server, serve
from graceful.server import GracefulServer
from graceful.tasks import TaskRegistry

__all__ = [
    "BatchWriter",
    "GracefulMiddleware",
    "GracefulServer",
    "GuardedHttpToolsProtocol",
    "Lifecycle",
    "PermanentWriteError",
    "Phase",
    "RetryPolicy",
    "ShutdownConfig",
    "TaskRegistry",
    "budget_problems",
    "build_server",
    "guarded_protocol",
    "serve",
]
