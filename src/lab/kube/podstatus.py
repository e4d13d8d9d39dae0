"""A pod's status as the kubelet reports it, computed from what the lab's kubelet knows.

The EndpointSlice controller reads exactly this: `serving` is the Ready condition,
`terminating` a set deletionTimestamp, the addresses `podIPs`
(pkg/controller/endpointslice, staging k8s.io/endpointslice/utils.go). The phase follows
the kubelet's getPhase (pkg/kubelet/kubelet_pods.go): Pending until the container has
started, Running while it runs or restarts (restartPolicy Always), and once a deleted
pod's container has stopped, Succeeded if it exited 0 and Failed otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lab.pods import Pod
from lab.runtime import RuntimeContainer

CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


def timestamp(wall: float) -> str:
    """RFC 3339 in UTC with seconds, as metav1.Time serialises."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exit_code(returncode: int | None) -> int:
    """A container's exit code as the runtime reports it: 128 + the signal for a
    process a signal ended (asyncio gives -signal)."""
    if returncode is None:
        return 0
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Observed:
    """What the agent has seen of one pod's container over time, for the status fields
    the lab's Pod does not keep (start times, the last termination, transitions)."""

    created_wall: float
    started_wall: float | None = None  # the running container's start
    container: RuntimeContainer | None = None  # the container seen running, by identity
    finished_wall: float | None = None
    last_terminated: dict[str, Any] | None = None
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (status, time)

    def see(self, pod: Pod, now_wall: float) -> None:
        running = pod.running
        if running is not None and running is not self.container:
            if self.container is not None and self.started_wall is not None:
                # The old container's own code: the pod's is reset by the restart.
                self.last_terminated = _terminated(
                    self.container.returncode, self.started_wall, self.finished_wall or now_wall
                )
            self.container, self.started_wall, self.finished_wall = running, now_wall, None
        if running is not None and running.returncode is not None and self.finished_wall is None:
            self.finished_wall = now_wall

    def condition(self, kind: str, status: bool, now_wall: float) -> dict[str, Any]:
        value = "True" if status else "False"
        last = self.transitions.get(kind)
        if last is None or last[0] != value:
            last = (value, timestamp(now_wall))
            self.transitions[kind] = last
        return {"type": kind, "status": value, "lastProbeTime": None, "lastTransitionTime": last[1]}


def _terminated(code: int | None, started: float, finished: float) -> dict[str, Any]:
    value = exit_code(code)
    return {
        "exitCode": value,
        # containerd reports any non-zero exit (137 for SIGKILL too) as Error.
        "reason": "Completed" if value == 0 else "Error",
        "startedAt": timestamp(started),
        "finishedAt": timestamp(finished),
    }


def pod_status(
    pod: Pod,
    seen: Observed,
    container_name: str,
    image: str,
    pod_ip: str,
    host_ip: str,
    uid: str,
    now_wall: float,
) -> dict[str, Any]:
    """The `status` the kubelet would write for `pod` now."""
    seen.see(pod, now_wall)
    running = pod.running
    is_running = running is not None and running.returncode is None and not pod.gone
    ready = pod.ready and is_running
    state: dict[str, Any]
    if pod.gone:
        finished = seen.finished_wall or now_wall
        state = {"terminated": _terminated(pod.exit_code, seen.started_wall or finished, finished)}
    elif is_running:
        assert seen.started_wall is not None
        state = {"running": {"startedAt": timestamp(seen.started_wall)}}
    elif running is None:
        state = {"waiting": {"reason": "ContainerCreating"}}
    else:  # exited, waiting for its restart
        if seen.started_wall is not None:
            seen.last_terminated = _terminated(
                running.returncode, seen.started_wall, seen.finished_wall or now_wall
            )
        state = {"waiting": {"reason": "CrashLoopBackOff"}}
    container: dict[str, Any] = {
        "name": container_name,
        "image": image,
        "imageID": "",
        "containerID": f"lab://{uid}-{pod.restarts}",
        "ready": ready,
        "started": is_running,
        "restartCount": pod.restarts,
        "state": state,
        "lastState": {"terminated": seen.last_terminated} if seen.last_terminated else {},
    }
    if pod.gone:
        phase = "Succeeded" if exit_code(pod.exit_code) == 0 else "Failed"
    elif seen.started_wall is None:
        phase = "Pending"
    else:
        phase = "Running"
    sandbox = not pod.gone
    conditions = [
        seen.condition("PodReadyToStartContainers", sandbox, now_wall),
        seen.condition("Initialized", True, now_wall),
        seen.condition("ContainersReady", ready, now_wall),
        seen.condition("Ready", ready, now_wall),
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": timestamp(seen.created_wall),
        "containerStatuses": [container],
    }
    if not pod.gone:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status
