# The lab's real Kubernetes control plane (`lab cluster up`), built from the official Go
# modules pinned in cluster/kube and cluster/etcd. `make test` and `make setup` call
# cluster-bins; it does nothing when the binaries of the pinned versions are built.

.PHONY: cluster-bins cluster-bins-for-setup cluster-pins cluster-up cluster-down

cluster-bins: ## Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (pinned; ~/.cache/graceful-calc/cluster-bins)
	@cluster/build.sh >/dev/null

# `make setup` (and so `make demo`) builds them where Go is, and says what it skipped
# where it is not; `make test` needs them.
cluster-bins-for-setup:
	@if command -v go >/dev/null; then cluster/build.sh >/dev/null; \
	else echo "note: no go command: the Kubernetes binaries are not built (lab cluster and --cluster local need them: install Go 1.26 or newer, then make cluster-bins)"; fi

cluster-pins: ## Regenerate cluster/kube/go.mod for KUBE_VERSION (default: the pinned one), its staging replaces from k8s.io/kubernetes' own go.mod
	cluster/gen-replaces.sh $${KUBE_VERSION:-$$(awk '$$1 == "k8s.io/kubernetes" {print $$2}' cluster/kube/go.mod)}

cluster-up: setup ## Start the lab's control plane with its nodes in the foreground (LAB_CLUSTER_ARGS="--nodes 3"); Ctrl-C stops it
	$(BIN)/lab cluster up $(LAB_CLUSTER_ARGS)

cluster-down: $(BIN)/calc ## Stop the cluster `make cluster-up` started (from another terminal)
	$(BIN)/lab cluster down
