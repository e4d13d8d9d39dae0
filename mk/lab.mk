# The lab: a version's Kubernetes manifests run on this machine (real HAProxy, InfluxDB,
# k6 and pods as processes), through a rollout, with every request accounted for.
# Results land in out/lab/<version>-<scenario>/ (report.json, timeline.png, pod logs).

LAB := $(BIN)/lab
version ?= v10
LAB_SCENARIO ?= rollout-restart
LAB_VUS ?= 50
LAB_LB ?= tcp
LAB_LAG ?= 1
LAB_ARGS ?=
LAB_OUT ?= out/lab

.PHONY: lab-run lab-scale lab-steady lab-v3-v5 lab-all lab-test lab-test-slow

lab-run: $(BIN)/calc ## Lab: run version=v10's manifests through LAB_SCENARIO (rollout-restart), LAB_VUS=50, LAB_LB=tcp, LAB_LAG=1
	$(LAB) run --manifests deploy/k8s/$(version) --scenario $(LAB_SCENARIO) --vus $(LAB_VUS) \
	  --lb $(LAB_LB) --endpoint-lag $(LAB_LAG) --out $(LAB_OUT)/$(version)-$(LAB_SCENARIO) $(LAB_ARGS)

lab-scale: $(BIN)/calc ## Lab: scale version=v10's Deployment to to=N replicas under load, e.g. to=20
	$(LAB) run --manifests deploy/k8s/$(version) --scenario scale --to $(or $(to),20) --vus $(LAB_VUS) \
	  --lb $(LAB_LB) --endpoint-lag $(LAB_LAG) --out $(LAB_OUT)/$(version)-scale $(LAB_ARGS)

lab-steady: $(BIN)/calc ## Lab: version=v10 under steady load, no action: the achieved/ideal rps of this machine
	$(LAB) run --manifests deploy/k8s/$(version) --scenario steady --vus $(LAB_VUS) \
	  --lb $(LAB_LB) --out $(LAB_OUT)/$(version)-steady $(LAB_ARGS)

lab-v3-v5: $(BIN)/calc ## Lab: the talk's key comparison, rollout-restart of v3 (failures) then v5 (none)
	$(MAKE) --no-print-directory lab-run version=v3
	$(MAKE) --no-print-directory lab-run version=v5

lab-all: $(BIN)/calc ## Lab: rollout-restart of every version v1..v10, one after another (long)
	@for v in v1 v2 v3 v4 v5 v6 v7 v8 v9 v10; do \
	  $(MAKE) --no-print-directory lab-run version=$$v || exit 1; \
	done

lab-test: $(BIN)/calc ## Lab: run the lab's own tests (tiny test app, real HAProxy/InfluxDB/k6)
	$(BIN)/pytest tests/lab $(PYTEST_ARGS)

lab-test-slow: $(BIN)/calc ## Lab: the long end-to-end runs too (calc v3/v5 rollouts, ~2 min more)
	LAB_SLOW=1 $(BIN)/pytest tests/lab $(PYTEST_ARGS)
