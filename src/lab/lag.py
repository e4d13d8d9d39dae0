"""The endpoint propagation lag: how long a pod's change takes to reach a node's proxy.

In a cluster that time is not one number. The EndpointSlice controller batches updates
(`--endpointslice-updates-batch-period`), the watch delivers them to each node's
kube-proxy, which rewrites its rules at most once per `--iptables-min-sync-period` (1 s
by default) and takes longer the more Services there are; a cloud load balancer in
front adds its own health-check interval. Each change therefore draws its own lag:

- `S`: every change takes S seconds (the lab's historical default, 1 s);
- `MIN-MAX`: uniform between MIN and MAX;
- `lognormal:MEDIAN,P99`: a lognormal with that median and 99th percentile, for a
  long tail: most changes arrive quickly and a few very late, as a proxy that is busy
  rewriting a large rule set, or a missed sync, does.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# The standard normal's 99th percentile: P99 = MEDIAN * exp(Z99 * sigma).
Z99 = 2.3263478740408408
FORMS = "SECONDS, MIN-MAX or lognormal:MEDIAN,P99"


class LagError(ValueError):
    pass


@dataclass(frozen=True)
class Lag:
    kind: str  # "fixed", "uniform" or "lognormal"
    low: float  # fixed: the lag; uniform: MIN; lognormal: the median
    high: float  # fixed: the lag; uniform: MAX; lognormal: the 99th percentile

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise LagError(f"unknown lag kind {self.kind!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise LagError(f"lags must be finite numbers of seconds, got {self.describe()}")
        if self.kind == "lognormal":
            if not 0 < self.low <= self.high:
                raise LagError(f"need 0 < MEDIAN <= P99, got {self.describe()}")
        elif not 0 <= self.low <= self.high:
            raise LagError(f"need 0 <= MIN <= MAX, got {self.describe()}")

    @classmethod
    def fixed(cls, seconds: float) -> Lag:
        return cls("fixed", seconds, seconds)

    def draw(self, rng: random.Random) -> float:
        if self.kind == "fixed" or self.high <= self.low:
            return self.low
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        sigma = math.log(self.high / self.low) / Z99
        return rng.lognormvariate(math.log(self.low), sigma)

    def describe(self) -> str:
        """As the command line takes it, with the unit: `1 s`, `0.5-3 s`, ..."""
        if self.kind == "fixed":
            return f"{self.low:g} s"
        if self.kind == "uniform":
            return f"{self.low:g}-{self.high:g} s"
        return f"lognormal (median {self.low:g} s, p99 {self.high:g} s)"

    def to_json(self) -> dict[str, float | str]:
        return {"kind": self.kind, "low": self.low, "high": self.high}


def parse_lag(text: str) -> Lag:
    """`1` -> fixed 1 s; `0.5-3` -> uniform; `lognormal:1,5` -> median 1 s, p99 5 s."""
    form = text.strip()
    try:
        if form.startswith("lognormal:"):
            median_text, comma, p99_text = form.removeprefix("lognormal:").partition(",")
            if not comma:
                raise LagError("lognormal needs MEDIAN,P99")
            return Lag("lognormal", float(median_text), float(p99_text))
        low_text, dash, high_text = form.partition("-")
        low = float(low_text)
        return Lag("uniform", low, float(high_text)) if dash else Lag.fixed(low)
    except ValueError as exc:  # LagError is one
        detail = f" ({exc})" if isinstance(exc, LagError) else ""
        raise LagError(f"expected {FORMS}, got {text!r}{detail}") from None


DEFAULT_LAG = Lag.fixed(1.0)  # one second, for every change
