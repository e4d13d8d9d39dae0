# The lab's SIGKILL chaos test (tests/lab/test_lab_sigkill.py): `lab run` killed at a
# seeded random moment, on the process and the Docker runtime; then nothing of that run may
# be left, and the next run on its --out completes. `make test` runs a few seeds; this runs
# as many as asked, seed by seed. SEEDS given here wins over chaos.mk's default.

.PHONY: lab-chaos

LAB_CHAOS_SEEDS ?= 1-20
LAB_CHAOS_RUNTIMES ?= process,docker
lab-chaos-seeds = $(if $(filter command line environment,$(origin SEEDS)),$(SEEDS),$(LAB_CHAOS_SEEDS))

lab-chaos: setup ## Lab: SIGKILL `lab run` at seeded random moments, then check nothing of it is left: SEEDS=1-20 (or 3,9,20-25), RUNTIMES=process,docker
	LAB_CHAOS_SEEDS='$(lab-chaos-seeds)' LAB_CHAOS_DOCKER_SEEDS='$(lab-chaos-seeds)' \
	  LAB_CHAOS_RUNTIMES='$(or $(RUNTIMES),$(LAB_CHAOS_RUNTIMES))' \
	  $(BIN)/pytest tests/lab/test_lab_sigkill.py -k 'random_moment' $(PYTEST_ARGS)
