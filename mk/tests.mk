# What the test suite needs beyond `make setup`, so that `make test` skips nothing on a
# fresh machine (tests/skipcheck.py fails the run on a skip not on tests/skip-allowlist.txt).
# Included by the root Makefile (`-include mk/*.mk`).

.PHONY: test-deps

# kubectl: tests/deploy/test_deploy_make.py runs `make k8s-deploy` against a kubeconfig
# with no cluster (Debian's kubernetes-client is enough for that: no cluster is reached).
# unshare (util-linux): test_validation_needs_no_network validates the manifests in a
# network namespace of its own; root may make one, and CI runs as root.
# chromium: tests/lab/test_html_report.py opens the lab's report.html in Debian's
# Chromium, headless, and checks that the table and every picture are rendered.
test-deps: ## Install what the tests need beyond setup: kubectl (kubernetes-client), unshare (util-linux), chromium
	@missing=""; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	command -v unshare >/dev/null || missing="$$missing util-linux"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null; then sudo="sudo"; \
	  else echo "error: need root or sudo to apt-get install$$missing" >&2; exit 1; fi; \
	  echo "installing$$missing with apt-get"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi
