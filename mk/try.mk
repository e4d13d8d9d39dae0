# The lab on a service this project did not write: ai-service of Azure-Samples/aks-store-demo
# (MIT), its own manifest unchanged, then after the four steps of the README
# (docs/try-your-service.md). Needs GitHub (the source is downloaded at TRY_COMMIT, never
# kept in this repository), PyPI, and root for --pod-network netns (the image's command
# binds 0.0.0.0). Included by the root Makefile, which defines BIN and $(BIN)/calc; the
# lab's haproxy, influxd and k6 are those `make setup` installs.
# Everything lands in TRY_DIR: the source, two virtualenvs, two image maps, the changed
# manifest, one lab run per setting and step.

.PHONY: try-ai-service try-ai-service-before try-ai-service-after

TRY_REPO ?= Azure-Samples/aks-store-demo
TRY_COMMIT ?= 7ce10c5110d6a52d3517dfb6d7a7b7b2edf2e5a5
TRY_DIR ?= out/try
TRY_SEED ?= 1
TRY_PYTHON ?= python3
# The load: the service's own GET /health, 3 replicas, 20 VUs, --quick for its 60 s
# startup probe delay.
TRY_LOAD ?= --scenario rollout-restart --replicas 3 --vus 20 --lb tcp --quick --pod-network netns \
  --request 'GET /health' --expect-status 200 --seed $(TRY_SEED) --quiet
TRY_SRC := $(TRY_DIR)/aks-store-demo
TRY_SVC := $(TRY_SRC)/src/ai-service

try-ai-service: try-ai-service-before try-ai-service-after ## The lab on aks-store-demo's ai-service: its manifest as published, then after the four steps, one node (1 s lag) and three (0.5-3 s); needs GitHub and root (~5 min)

# The source at TRY_COMMIT, as GitHub's archive of it.
$(TRY_SRC)/ai-service.yaml:
	mkdir -p $(TRY_SRC)
	curl -fsSL https://github.com/$(TRY_REPO)/archive/$(TRY_COMMIT).tar.gz \
	  | tar -xz --strip-components=1 -C $(TRY_SRC)

# The image's dependencies at its own pins (src/ai-service/requirements.txt): uvicorn 0.49.0.
$(TRY_DIR)/venv/bin/uvicorn: $(TRY_SRC)/ai-service.yaml
	$(TRY_PYTHON) -m venv $(TRY_DIR)/venv
	$(TRY_DIR)/venv/bin/pip install --quiet -r $(TRY_SVC)/requirements.txt

# Step 1's image: the same pins plus graceful-asgi (it keeps uvicorn 0.49.0).
$(TRY_DIR)/venv-graceful/bin/graceful-serve: $(TRY_SRC)/ai-service.yaml
	$(TRY_PYTHON) -m venv $(TRY_DIR)/venv-graceful
	$(TRY_DIR)/venv-graceful/bin/pip install --quiet -r $(TRY_SVC)/requirements.txt ./packages/graceful-asgi

# The image maps: paths relative to the map's own directory, TRY_DIR. The manifest has no
# `command`, so each gives the Dockerfile's CMD.
$(TRY_DIR)/images-before.yml: $(TRY_SRC)/ai-service.yaml
	printf 'images:\n  ai-service:\n    venv: venv\n    workdir: aks-store-demo/src/ai-service\n    cmd: [uvicorn, main:app, --host, 0.0.0.0, --port, "5001"]\n    env: {APP_VERSION: "0.1.0"}\n' > $(TRY_DIR)/images-before.yml

$(TRY_DIR)/images-after.yml: $(TRY_SRC)/ai-service.yaml
	printf 'images:\n  ai-service:\n    venv: venv-graceful\n    workdir: aks-store-demo/src/ai-service\n    cmd: [graceful-serve, main:app, --host, 0.0.0.0, --port, "5001"]\n    env: {APP_VERSION: "0.1.0"}\n' > $(TRY_DIR)/images-after.yml

# Steps 2 and 3 on the manifest: readiness on /ready, GRACEFUL_GRACE_PERIOD = the pod's
# terminationGracePeriodSeconds (not set: 30). Step 4 has nothing to do: no background work.
$(TRY_DIR)/after/ai-service.yaml: $(TRY_SRC)/ai-service.yaml $(BIN)/calc
	mkdir -p $(TRY_DIR)/after
	$(BIN)/python -c 'import sys, yaml; docs = list(yaml.safe_load_all(open(sys.argv[1]))); \
	  pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]; \
	  c = pod["containers"][0]; c["readinessProbe"]["httpGet"]["path"] = "/ready"; \
	  c["env"].append({"name": "GRACEFUL_GRACE_PERIOD", "value": str(pod.get("terminationGracePeriodSeconds", 30))}); \
	  yaml.safe_dump_all(docs, open(sys.argv[2], "w"), sort_keys=False)' $< $@

# One lab run: manifest, image map, setting, output directory.
try_run = $(BIN)/lab run --manifests $(1) --image-map $(2) $(TRY_LOAD) $(3) --out $(4)

try-ai-service-before: $(BIN)/calc $(TRY_DIR)/venv/bin/uvicorn $(TRY_DIR)/images-before.yml
	$(call try_run,$(TRY_SRC)/ai-service.yaml,$(TRY_DIR)/images-before.yml,--endpoint-lag 1,$(TRY_DIR)/before-1node)
	$(call try_run,$(TRY_SRC)/ai-service.yaml,$(TRY_DIR)/images-before.yml,--nodes 3 --endpoint-lag 0.5-3,$(TRY_DIR)/before-3nodes)

try-ai-service-after: $(BIN)/calc $(TRY_DIR)/venv-graceful/bin/graceful-serve $(TRY_DIR)/images-after.yml $(TRY_DIR)/after/ai-service.yaml
	$(call try_run,$(TRY_DIR)/after/ai-service.yaml,$(TRY_DIR)/images-after.yml,--endpoint-lag 1,$(TRY_DIR)/after-1node)
	$(call try_run,$(TRY_DIR)/after/ai-service.yaml,$(TRY_DIR)/images-after.yml,--nodes 3 --endpoint-lag 0.5-3,$(TRY_DIR)/after-3nodes)
