# bench/peers: the calc API on uvicorn, hypercorn, granian and gunicorn defaults, against
# calc v10, in one session (throughput, lab rollouts, shutdown). Included by the root
# Makefile, which defines BIN and the setup target. PEERS_ARGS passes options through,
# e.g. make bench-peers PEERS_ARGS="--parts throughput --rounds 5".

.PHONY: bench-peers bench-peers-quick bench-peers-test bench-graceful-cost

PEERS_OUT ?= out/peers
PEERS_ARGS ?=

bench-peers: setup ## Peers side by side: throughput, lab rollouts and shutdown of each peer vs calc v10 (~25 min); PEERS_ARGS=
	$(BIN)/python bench/peers/run --out $(PEERS_OUT) $(PEERS_ARGS)

bench-peers-quick: setup ## Peers side by side, shrunk: 1 round of 5 s, 50 VUs, tcp only (~5 min)
	$(BIN)/python bench/peers/run --quick --out $(PEERS_OUT) $(PEERS_ARGS)

bench-peers-test: setup ## The bench/peers tests: each peer starts and answers, each part works on a tiny load
	$(BIN)/pytest -q tests/bench

bench-graceful-cost: setup ## What graceful adds per request: its ASGI layers in process, and CPU per request end to end, per server (~7 min)
	$(BIN)/python bench/graceful_cost.py
