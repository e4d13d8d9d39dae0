"""What one chaos run does, drawn from a seed: the same seed and duration always give the
same plan (the timing of the real processes still varies from run to run)."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

from tests.chaos.fake_influx import Segment

PROFILES = ("v9", "v10")


@dataclass(frozen=True)
class SignalStep:
    """`after` seconds after the previous step (the first: after the start of the load;
    after a SIGKILL: after the restarted process answers), send `signal`. A SIGKILL is
    followed by a restart on the same port and spool `restart_after` seconds later."""

    after: float
    signal: str
    restart_after: float = 0.0


@dataclass(frozen=True)
class Plan:
    seed: int
    duration: float
    profile: str
    batch_size: int
    batch_interval: float
    max_buffer: int
    slow_math: float
    clients: int
    vanish_rate: float  # share of requests whose client disconnects before the answer
    sink: tuple[Segment, ...]
    signals: tuple[SignalStep, ...]

    def describe(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    def env(self) -> dict[str, str]:
        """calc's switches for this run. Shutdown phases are shortened (quiet at most 2 s,
        drain 3 s, flush 3 s, in a 10 s grace period) so a run takes seconds."""
        return {
            "CALC_BATCH_SIZE": str(self.batch_size),
            "CALC_BATCH_INTERVAL": str(self.batch_interval),
            "CALC_MAX_BUFFER": str(self.max_buffer),
            "CALC_SLOW_MATH": str(self.slow_math),
            "CALC_FLUSH_TIMEOUT": "3",
            "CALC_GRACE_PERIOD": str(GRACE_PERIOD),
            **({"CALC_QUIET_MAX": "2", "CALC_DRAIN_TIMEOUT": "3"} if self.profile == "v10" else {}),
        }


GRACE_PERIOD = 10.0


def draw(seed: int, duration: float) -> Plan:
    # One generator per part, so that the duration (which sets how many sink segments
    # are drawn) changes nothing else of a seed's plan.
    rng = random.Random(f"{seed}-service")
    profile = rng.choice(PROFILES)
    batch_size = rng.choice((5, 20, 100, 500))
    max_buffer = rng.choice((batch_size, batch_size * 4, 100_000))
    return Plan(
        seed=seed,
        duration=duration,
        profile=profile,
        batch_size=batch_size,
        batch_interval=rng.choice((0.2, 1.0, 5.0)),
        max_buffer=max_buffer,
        slow_math=rng.choice((0.01, 0.05, 0.1, 0.3)),
        clients=rng.randint(2, 6),
        vanish_rate=rng.choice((0.0, 0.05, 0.2)),
        sink=_draw_sink(random.Random(f"{seed}-sink"), duration + GRACE_PERIOD),
        signals=_draw_signals(random.Random(f"{seed}-signals"), duration, profile),
    )


def _draw_sink(rng: random.Random, until: float) -> tuple[Segment, ...]:
    segments = [Segment(0.0, "up")]
    at = rng.uniform(0.3, 2.0)
    while at < until:
        behaviour = rng.choices(
            ("up", "slow", "refused", "stalled", "5xx", "400", "4xx"),
            weights=(4, 1.5, 1.5, 1, 1.5, 1, 1),
        )[0]
        value = {
            "slow": rng.choice((0.3, 1.0, 3.0)),
            "5xx": float(rng.choice((500, 503))),
            "400": float(rng.randint(1, 3)),
            "4xx": float(rng.choice((401, 404, 413))),
        }.get(behaviour, 0.0)
        segments.append(Segment(round(at, 3), behaviour, value))
        at += rng.uniform(0.3, 3.0)
    return tuple(segments)


def _draw_signals(rng: random.Random, duration: float, profile: str) -> tuple[SignalStep, ...]:
    kinds = ("SIGTERM", "SIGINT", "SIGKILL") if profile == "v10" else ("SIGTERM", "SIGINT")
    weights = (4, 3, 1.5) if profile == "v10" else (4, 3)
    steps = []
    for i in range(rng.randint(1, 3)):
        kind = rng.choices(kinds, weights=weights)[0]
        if i == 0:
            after = rng.uniform(0.3, 0.8) * duration
        else:
            after = rng.choice((rng.uniform(0.01, 0.5), rng.uniform(0.5, 3.0)))
        restart = rng.uniform(0.05, 1.0) if kind == "SIGKILL" else 0.0
        steps.append(SignalStep(round(after, 3), kind, round(restart, 3)))
    return tuple(steps)
