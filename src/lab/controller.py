"""The Deployment controller: keeps `replicas` pods of the current template running.

Each template change (a new template, or `rollout restart`, which stamps an annotation)
is a new revision, like a new ReplicaSet. RollingUpdate follows the Deployment
controller's arithmetic: at most replicas + maxSurge non-terminating pods, and old pods
are deleted only while at least replicas - maxUnavailable pods stay available (ready for
minReadySeconds). Recreate deletes every old pod and waits until they are gone before
creating new ones. Terminating pods do not count, as in Kubernetes. Pods to delete on a
scale-down are picked in the ReplicaSet controller's order (`ActivePodsWithRanks`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import math
import secrets

from lab.events import EventLog
from lab.images import ImageMap
from lab.manifest import Deployment, PodTemplate
from lab.pods import Kubelet, Pod
from lab.waits import stop_task, wait_event

# `kubectl annotate pod P controller.kubernetes.io/pod-deletion-cost=N`: lower goes first.
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


@dataclasses.dataclass(frozen=True)
class VictimFacts:
    """What the ReplicaSet controller looks at when it picks pods to delete."""

    uid: str
    pending: bool  # no container started yet (phase Pending)
    ready: bool
    ready_since: float | None  # the Ready condition's lastTransitionTime
    deletion_cost: int
    restarts: int
    created: float

    @staticmethod
    def of(pod: Pod) -> VictimFacts:
        return VictimFacts(
            uid=pod.name,  # random per pod, as a UID is
            pending=pod.running is None,
            ready=pod.ready,
            ready_since=pod.ready_since,
            deletion_cost=deletion_cost(pod.template.annotations),
            restarts=pod.restarts,
            created=pod.created,
        )


def deletion_cost(annotations: dict[str, str]) -> int:
    """The pod-deletion-cost annotation as an int32; a missing or bad value counts as 0
    (GetDeletionCostFromPodAnnotations' error is ignored by the sort)."""
    raw = annotations.get(DELETION_COST, "0")
    try:
        cost = int(raw)
    except ValueError:
        return 0
    return cost if -(2**31) <= cost < 2**31 else 0


def _log_age(t: float | None, now: float) -> int:
    # LogarithmicScaleDown: times are compared as floor(log2(age in ns)), so pods of about
    # the same age are ranked by UID (pseudo-randomly) rather than strictly by age.
    if t is None:
        return -2  # an empty time sorts first (afterOrZero)
    age_ns = (now - t) * 1e9
    return int(math.log2(age_ns)) if age_ns >= 1 else -1


def deletion_key(facts: VictimFacts, now: float) -> tuple[object, ...]:
    """Sort key, smallest deleted first, after `ActivePodsWithRanks.Less` (kubernetes
    pkg/controller/controller_utils.go), rule by rule:
    1. unassigned before assigned: every lab pod is bound to its node when created;
    2. Pending before Running;
    3. not ready before ready;
    4. lower pod-deletion-cost first;
    5. more ready pods of the set on the same node first: one node, so all equal;
    6. both ready: ready for a shorter time first (log scale, then by UID);
    7. more container restarts first;
    8. created more recently first (log scale, then by UID)."""
    if facts.ready:
        # Rule 6 decides between two ready pods unless their ready times are equal
        # to the nanosecond, which two lab pods' never are: 7 and 8 are not reached.
        rest: tuple[object, ...] = (_log_age(facts.ready_since, now), facts.uid, 0, 0)
    else:
        rest = (0, "", -facts.restarts, _log_age(facts.created, now))
    return (not facts.pending, facts.ready, facts.deletion_cost, *rest, facts.uid)


def rank_for_deletion(pods: list[Pod], now: float) -> list[Pod]:
    """`pods` in the order the ReplicaSet controller deletes them."""
    return sorted(pods, key=lambda p: deletion_key(VictimFacts.of(p), now))


class DeploymentController:
    def __init__(
        self,
        deployment: Deployment,
        kubelet: Kubelet,
        images: ImageMap,
        events: EventLog,
        replicas: int | None = None,
    ) -> None:
        self.deployment = deployment
        self.kubelet = kubelet
        self.images = images
        self.events = events
        self.replicas = deployment.replicas if replicas is None else replicas
        self.template = deployment.template
        self.image = images.image(self.template.container.image)
        self.revision = 1
        self.pods: list[Pod] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.running = False
        # Sampled after every reconcile since `start_sampling`: the most non-terminating
        # pods and the fewest available ones, to check a rollout against its bounds.
        self.sampling = False
        self.peak_pods = 0
        self.fewest_available: int | None = None

    # -- actions -------------------------------------------------------------------------

    def scale(self, replicas: int) -> None:
        self.events.add("", "scale", f"{self.deployment.name} to {replicas} replicas")
        self.replicas = replicas
        self.wake.set()

    def rollout_restart(self) -> None:
        """`kubectl rollout restart`: the same template with a restartedAt annotation."""
        stamp = datetime.datetime.now(datetime.UTC).isoformat()
        annotations = {**self.template.annotations, "kubectl.kubernetes.io/restartedAt": stamp}
        self.update_template(dataclasses.replace(self.template, annotations=annotations))

    def update_template(self, template: PodTemplate) -> None:
        self.image = self.images.image(template.container.image)
        self.template = template
        self.revision += 1
        self.events.add("", "rollout", f"{self.deployment.name} revision {self.revision}")
        self.wake.set()

    def delete_all(self) -> None:
        """Scale to zero: every pod is deleted gracefully."""
        self.replicas = 0
        for pod in self.active():
            self.kubelet.delete_pod(pod)
        self.wake.set()

    # -- state ---------------------------------------------------------------------------

    def active(self) -> list[Pod]:
        return [p for p in self.pods if not p.terminating and not p.gone]

    def available(self, pod: Pod) -> bool:
        return pod.available(self.events.now(), self.deployment.min_ready_seconds)

    def complete(self) -> bool:
        """Rollout done: every non-terminating pod is of the current revision, there are
        `replicas` of them, and all are available."""
        active = self.active()
        return (
            len(active) == self.replicas
            and all(p.revision == self.revision for p in active)
            and all(self.available(p) for p in active)
        )

    # -- reconcile loop ------------------------------------------------------------------

    async def run(self) -> None:
        while self.running:
            self.reconcile()
            self.wake.clear()
            # Availability depends on time (minReadySeconds), so poll as well as wake.
            await wait_event(self.wake, 0.05)

    def start(self) -> None:
        self.running = True
        self.task = asyncio.create_task(self.run(), name="deployment controller")

    async def stop(self) -> None:
        self.running = False  # ends the loop even if a cancellation were lost
        await stop_task(self.task)
        self.task = None

    def reconcile(self) -> None:
        self.pods = [p for p in self.pods if not p.gone]
        active = self.active()
        new = [p for p in active if p.revision == self.revision]
        old = [p for p in active if p.revision != self.revision]
        if self.deployment.strategy.type == "Recreate":
            if old:
                for pod in old:
                    self.kubelet.delete_pod(pod)
                return
            if any(p.revision != self.revision for p in self.pods):
                return  # old pods still terminating: Recreate waits for them to be gone
            self._scale_to(new, self.replicas)
        elif not old:
            self._scale_to(new, self.replicas)
        else:
            self._rolling(active, new, old)
        if self.sampling:
            active = self.active()
            available = sum(1 for p in active if self.available(p))
            self.peak_pods = max(self.peak_pods, len(active))
            if self.fewest_available is None or available < self.fewest_available:
                self.fewest_available = available

    def start_sampling(self) -> None:
        self.sampling = True
        self.peak_pods = 0
        self.fewest_available = None

    def _rolling(self, active: list[Pod], new: list[Pod], old: list[Pod]) -> None:
        surge, unavailable = self.deployment.strategy.resolve(self.replicas)
        # Scale the new revision up, within replicas + maxSurge.
        room = self.replicas + surge - len(active)
        wanted = min(self.replicas - len(new), room)
        for _ in range(max(0, wanted)):
            new.append(self._create())
            active.append(new[-1])
        if len(new) > self.replicas:
            self._scale_to(new, self.replicas)
            active = self.active()
        # Scale old revisions down while enough pods stay available.
        min_available = self.replicas - unavailable
        new_unavailable = sum(1 for p in new if not self.available(p))
        budget = len(active) - min_available - new_unavailable
        if budget <= 0:
            return
        # Unavailable old pods first: deleting them costs no availability
        # (cleanupUnhealthyReplicas, then scaleDownOldReplicaSetsForRollingUpdate, in
        # pkg/controller/deployment/rolling.go). Both take the oldest ReplicaSet first,
        # and its ReplicaSet controller picks the pods by rank.
        for pod in self._old_victims([p for p in old if not self.available(p)])[:budget]:
            self.kubelet.delete_pod(pod)
            budget -= 1
        available = sum(1 for p in self.active() if self.available(p))
        spare = min(budget, available - min_available)
        for pod in self._old_victims([p for p in old if not p.terminating])[: max(0, spare)]:
            self.kubelet.delete_pod(pod)

    def _old_victims(self, pods: list[Pod]) -> list[Pod]:
        now = self.events.now()
        return sorted(pods, key=lambda p: (p.revision, deletion_key(VictimFacts.of(p), now)))

    def _scale_to(self, pods: list[Pod], replicas: int) -> None:
        for _ in range(replicas - len(pods)):
            pods.append(self._create())
        if len(pods) > replicas:
            ranked = rank_for_deletion(pods, self.events.now())
            for pod in ranked[: len(pods) - replicas]:
                self.kubelet.delete_pod(pod)

    def _create(self) -> Pod:
        name = f"{self.deployment.name}-r{self.revision}-{secrets.token_hex(3)}"
        pod = self.kubelet.create_pod(name, self.template, self.image, self.revision)
        self.pods.append(pod)
        return pod
