"""graceful: building blocks that let any ASGI service on uvicorn (also under gunicorn,
`graceful.gunicorn.Worker`) or hypercorn (`graceful.hypercorn`) shut down without
dropping a request or losing a write.

- `ShutdownConfig`: the switches and time limits of the shutdown phases.
- `Lifecycle`: shared state (draining, in-flight, last activity, the shutdown deadline).
- `GracefulMiddleware`: readiness-relevant bookkeeping and `Connection: close` while draining.
- `GracefulServer`: a uvicorn server whose SIGTERM runs delay -> close -> drain -> app shutdown.
- `TaskRegistry`: background tasks with hard references, awaited with a deadline.
- `BatchWriter`: buffers items, writes them in batches, flushes with retries at shutdown;
  a sink says what to do with a failed batch by the error it raises (`PermanentWriteError`,
  `BatchTooLargeError`, `HoldWriteError`, anything else: retry); `NotAccepted` from `add`
  when its journal cannot store an item.
- `guarded_protocol(...)`: request-head size and time limits for uvicorn's httptools.
- `Spool`: a write-ahead spool so accepted lines survive a killed process.
- `serve(app, lifecycle, **uvicorn_options)`: all of the above around any ASGI app.
- `ReadinessMiddleware`: the readiness path answered by the server.
- `current_lifecycle()`: the lifecycle of the server command running this process
  (`graceful-serve`, the gunicorn worker, the hypercorn runner).
"""

from graceful.batcher import (
    BatchTooLargeError,
    BatchWriter,
    HoldWriteError,
    Journal,
    NotAccepted,
    PermanentWriteError,
    RetryPolicy,
)
from graceful.config import ShutdownConfig, budget_problems
from graceful.current import NoLifecycle, current_lifecycle
from graceful.lifecycle import Lifecycle, Phase
from graceful.middleware import GracefulMiddleware
from graceful.protocol import GuardedHttpToolsProtocol, guarded_protocol
from graceful.readiness import ReadinessMiddleware
from graceful.run import build_server, serve
from graceful.server import GracefulServer
from graceful.spool import Spool, SpoolBusy, SpoolUnavailable
from graceful.tasks import TaskRegistry

__all__ = [
    "BatchTooLargeError",
    "BatchWriter",
    "GracefulMiddleware",
    "GracefulServer",
    "GuardedHttpToolsProtocol",
    "HoldWriteError",
    "Journal",
    "Lifecycle",
    "NoLifecycle",
    "NotAccepted",
    "PermanentWriteError",
    "Phase",
    "ReadinessMiddleware",
    "RetryPolicy",
    "ShutdownConfig",
    "Spool",
    "SpoolBusy",
    "SpoolUnavailable",
    "TaskRegistry",
    "budget_problems",
    "build_server",
    "current_lifecycle",
    "guarded_protocol",
    "serve",
]
