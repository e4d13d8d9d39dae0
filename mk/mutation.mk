# Mutation testing with mutmut 3: each part (graceful, calc) is mutated in a copy of the
# tree under out/mutation/<part>, so the work tree and its pyproject.toml stay as they are,
# and each mutant runs only the tests that reached the mutated function.
#
# mutmut maps tests to functions in the pytest process itself, so only in-process tests
# can kill a mutant: code that runs only inside a `calc serve` child (the server's phases,
# the app) shows as "no tests" here, although the end-to-end tests cover it.
# Included by the root Makefile (`-include mk/*.mk`).

.PHONY: mutation

MUTATION_DIR ?= out/mutation
MUTATION_PARTS ?= graceful calc
# The in-process tests of each part (the ones mutmut can map to functions), one path per
# line in tests/<part>/mutation-tests.txt ('#' starts a comment).
mutation_tests = $(shell sed -e 's/\#.*//' tests/$(1)/mutation-tests.txt)
MUTATION_CHILDREN ?= 2

mutation: $(BIN)/calc ## Mutation testing (mutmut 3) of src/graceful and src/calc (~1 h here); out/mutation/<part>/score.txt, survivors.txt
	$(BIN)/pip install --quiet 'mutmut>=3,<4'
	@set -e; for part in $(MUTATION_PARTS); do \
	  case $$part in \
	    graceful) tests="$(call mutation_tests,graceful)";; \
	    calc) tests="$(call mutation_tests,calc)";; \
	    *) echo "error: MUTATION_PARTS: unknown part '$$part' (graceful, calc)" >&2; exit 2;; \
	  esac; \
	  dir=$(MUTATION_DIR)/$$part; rm -rf "$$dir"; mkdir -p "$$dir"; \
	  cp -r src tests deploy pyproject.toml "$$dir"/; \
	  find "$$dir" -name __pycache__ -prune -exec rm -rf {} +; \
	  { echo; echo "[tool.mutmut]"; echo "source_paths = [\"src/$$part/\"]"; \
	    printf 'pytest_add_cli_args_test_selection = ['; \
	    for t in $$tests; do printf '"%s", ' "$$t"; done; echo ']'; \
	    echo 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]'; } >> "$$dir/pyproject.toml"; \
	  echo "mutation testing src/$$part against: $$tests"; \
	  start=$$(date +%s); \
	  (cd "$$dir" && $(abspath $(BIN))/mutmut run --max-children $(MUTATION_CHILDREN) >mutmut.log 2>&1) || \
	    { tail -c 2000 "$$dir/mutmut.log"; exit 1; }; \
	  took=$$(( $$(date +%s) - start )); \
	  (cd "$$dir" && $(abspath $(BIN))/mutmut export-cicd-stats >/dev/null && \
	    $(abspath $(BIN))/mutmut results >survivors.txt); \
	  $(BIN)/python -c 'import json,sys; s=json.load(open(sys.argv[1])); \
	    k,v,n,t=s["killed"],s["survived"],s["no_tests"],s["total"]; \
	    print(f"{sys.argv[2]}: {k} of {t} killed ({100*k/max(t,1):.1f} %), {v} survived, {n} with no in-process test, {t-k-v-n} other; {sys.argv[3]} s")' \
	    "$$dir/mutants/mutmut-cicd-stats.json" "$$part" "$$took" | tee "$$dir/score.txt"; \
	done
