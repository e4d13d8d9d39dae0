"""The API server through the official `kubernetes` client, for asyncio code.

The client is synchronous: every call runs in a worker thread (`call`), and a watch runs
in a thread of its own (`Informer`), handing its events to the event loop. Objects stay
plain JSON dicts (the API's own field names, `deletionTimestamp` not
`deletion_timestamp`), the form the lab's manifest rules read.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import watch
from kubernetes.client.rest import ApiException

# A watch ends on the server after this long and is opened again from the last
# resourceVersion (client-go's reflector picks 5-10 min; short keeps a stop prompt
# even where a socket shutdown does not wake the reader).
WATCH_SECONDS = 60
RELIST_BACKOFF = 1.0
# Every request gets an answer or an error within this (the client waits forever by
# default): a stalled API server must not hold a node's lease loop, a status write or a
# stop. A watch may be silent for WATCH_SECONDS, so its reads get that and some.
REQUEST_TIMEOUT = 30.0
WATCH_READ_TIMEOUT = WATCH_SECONDS + 15.0


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One blocking client call in a worker thread, within REQUEST_TIMEOUT."""
    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
    return await asyncio.to_thread(fn, *args, **kwargs)


async def call_json(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A client call whose answer is returned as the API's JSON, not as a model."""

    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)

    def raw() -> dict[str, Any]:
        response = fn(*args, _preload_content=False, **kwargs)
        try:
            data: dict[str, Any] = json.loads(response.data)
        finally:
            response.release_conn()
        return data

    return await asyncio.to_thread(raw)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an API error (None for anything else)."""
    return exc.status if isinstance(exc, ApiException) else None


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # ADDED, MODIFIED, DELETED; SYNCED once the first list is delivered
    obj: dict[str, Any]


class Informer:
    """List, then watch, one kind of object in a thread: client-go's reflector in short.

    Events reach `on_event` on the event loop, in order. After the first list every
    object is delivered as ADDED, then one SYNCED event. A watch that expires (410 Gone)
    or fails is listed again after RELIST_BACKOFF; objects that vanished meanwhile are
    delivered as DELETED, so the receiver's view converges as with client-go."""

    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        on_event: Callable[[WatchEvent], None],
        on_error: Callable[[str], object] | None = None,
        **selectors: Any,
    ) -> None:
        self.name = name
        self.list_fn = list_fn
        self.on_event = on_event
        self.on_error = on_error or (lambda message: None)
        self.selectors = selectors
        self.known: dict[str, dict[str, Any]] = {}  # uid -> last object
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.synced = asyncio.Event()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"informer {self.name}", daemon=True)
        self._thread.start()

    async def stop(self, timeout: float = 5.0) -> bool:
        """Stop the watch; True if its thread ended within `timeout`."""
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()  # shuts the socket down: a blocked read returns at once
        thread = self._thread
        if thread is None:
            return True
        await asyncio.to_thread(thread.join, timeout)
        return not thread.is_alive()

    def _post(self, fn: Callable[..., object], *args: object) -> None:
        """Run `fn(*args)` on the event loop, from the watch's thread."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._stop.set()

    def _deliver(self, event: WatchEvent) -> None:
        if event.kind == "SYNCED":
            self._post(self.synced.set)
        self._post(self.on_event, event)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._list()
                self._watch_from(version)
            except Exception as exc:  # the API server restarted, a network error, ...
                if self._stop.is_set():
                    return
                self._post(self.on_error, f"{self.name}: {exc}")
                self._stop.wait(RELIST_BACKOFF)

    def _list(self) -> str:
        response = self.list_fn(
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **self.selectors
        )
        try:
            listed = json.loads(response.data)
        finally:
            response.release_conn()
        seen: dict[str, dict[str, Any]] = {}
        for item in listed.get("items") or []:
            seen[item["metadata"]["uid"]] = item
        for uid, obj in list(self.known.items()):
            if uid not in seen:
                del self.known[uid]
                self._deliver(WatchEvent("DELETED", obj))
        for uid, obj in seen.items():
            kind = "MODIFIED" if uid in self.known else "ADDED"
            self.known[uid] = obj
            self._deliver(WatchEvent(kind, obj))
        self._deliver(WatchEvent("SYNCED", {}))
        version: str = listed["metadata"]["resourceVersion"]
        return version

    def _watch_from(self, version: str) -> None:
        while not self._stop.is_set():
            self._watch = watch.Watch()
            stream = self._watch.stream(
                self.list_fn,
                resource_version=version,
                timeout_seconds=WATCH_SECONDS,
                allow_watch_bookmarks=True,
                deserialize=False,
                _request_timeout=WATCH_READ_TIMEOUT,
                **self.selectors,
            )
            for event in stream:
                if self._stop.is_set():
                    return
                kind, obj = event["type"], event["object"]
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if kind == "BOOKMARK":
                    continue
                if kind == "ERROR":  # 410 Gone after a compaction: list again
                    raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                uid = obj["metadata"]["uid"]
                if kind == "DELETED":
                    self.known.pop(uid, None)
                else:
                    self.known[uid] = obj
                self._deliver(WatchEvent(kind, obj))
