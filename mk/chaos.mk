# The chaos test (tests/chaos): calc v9 and v10 as real processes against a scripted fake
# InfluxDB, with a random load, sink behaviour and signals per seed; seeds run one after
# the other (the machine is shared). Included by the root Makefile, which defines BIN and
# the setup target. DURATION is shared with load-test, so its default here is CHAOS_DURATION.

.PHONY: chaos

SEEDS ?= 1-200
CHAOS_DURATION ?= 6
CHAOS_OUT ?= out/chaos

chaos: setup ## Chaos test, seed by seed: SEEDS=1-200 (or 7, or 3,9,20-25), DURATION=6 s of load per seed; failing seeds print their replay command
	$(BIN)/python -m tests.chaos --seeds '$(SEEDS)' --duration '$(or $(DURATION),$(CHAOS_DURATION))' --out '$(CHAOS_OUT)'
