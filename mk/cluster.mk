# The lab's real Kubernetes control plane (`lab cluster up`), built from the official Go
# modules pinned in cluster/kube and cluster/etcd, and a real node (kubelet, kube-proxy,
# containerd, runc, the CNI plugins, the pause image) from those pinned in cluster/node.
# `make test` and `make setup` call cluster-bins; it does nothing when the binaries of the
# pinned versions are built.

.PHONY: cluster-bins cluster-bins-for-setup cluster-node-deps cluster-pins cluster-node-pins cluster-up cluster-down

cluster-bins: cluster-node-deps ## Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (~/.cache/graceful-calc/cluster-bins) and the node's kubelet, kube-proxy, containerd, runc, CNI plugins, pause image (node-bins); pinned
	@cluster/build.sh >/dev/null
	@cluster/build-node.sh >/dev/null

# The node's C parts: gcc and libc6-dev (the static pause binary, runc's nsenter) and
# libseccomp-dev (runc's seccomp), from Debian where missing.
cluster-node-deps:
	@missing=""; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	[ -e /usr/include/stdio.h ] || missing="$$missing libc6-dev"; \
	[ -e /usr/include/seccomp.h ] || missing="$$missing libseccomp-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null; then sudo="sudo"; \
	  else echo "error: need root or sudo to apt-get install$$missing" >&2; exit 1; fi; \
	  echo "installing$$missing with apt-get"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

# `make setup` (and so `make demo`) builds them where Go is, and says what it skipped
# where it is not; `make test` needs them.
cluster-bins-for-setup:
	@if command -v go >/dev/null; then $(MAKE) --no-print-directory cluster-bins; \
	else echo "note: no go command: the Kubernetes binaries are not built (lab cluster and --cluster local need them: install Go 1.26 or newer, then make cluster-bins)"; fi

cluster-pins: ## Regenerate cluster/kube/go.mod for KUBE_VERSION (default: the pinned one), its staging replaces from k8s.io/kubernetes' own go.mod
	cluster/gen-replaces.sh $${KUBE_VERSION:-$$(awk '$$1 == "k8s.io/kubernetes" {print $$2}' cluster/kube/go.mod)}

cluster-node-pins: ## Regenerate cluster/node/*/go.mod: kubelet and kube-proxy at cluster/kube's Kubernetes, CONTAINERD_VERSION, RUNC_VERSION, CNI_PLUGINS_VERSION
	cluster/node/gen-pins.sh

cluster-up: setup ## Start the lab's control plane with its nodes in the foreground (LAB_CLUSTER_ARGS="--nodes 3"); Ctrl-C stops it
	$(BIN)/lab cluster up $(LAB_CLUSTER_ARGS)

cluster-down: $(BIN)/calc ## Stop the cluster `make cluster-up` started (from another terminal)
	$(BIN)/lab cluster down
