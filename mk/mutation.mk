# Mutation testing with mutmut 3: each part (graceful, calc) is mutated in a copy of the
# tree under out/mutation/<part>, so the work tree and its pyproject.toml stay as they are,
# and each mutant runs only the tests that reached the mutated function.
#
# mutmut maps tests to functions in the pytest process itself, so only in-process tests
# can kill a mutant: code that runs only inside a child process (a `calc serve` started
# by a test) shows as "no tests" here, although the end-to-end tests cover it. That is
# why graceful's server, command line and protocol also have in-process tests.
#
# The score (tests/mutation_report.py): killed / total, the survivors listed as
# equivalent in tests/<part>/mutation-equivalents.txt, and the survivors that are
# neither, by name. The run fails when that list names a mutant that no longer exists
# or that a test now kills.
# Included by the root Makefile (`-include mk/*.mk`).

.PHONY: mutation

MUTATION_DIR ?= out/mutation
MUTATION_PARTS ?= graceful calc
# The in-process tests of each part (the ones mutmut can map to functions), one path per
# line in tests/<part>/mutation-tests.txt ('#' starts a comment).
mutation_tests = $(shell sed -e 's/\#.*//' tests/$(1)/mutation-tests.txt)
MUTATION_CHILDREN ?= 2
# Mutant name globs to run instead of all, e.g. MUTATION_SELECT='graceful.batcher*'.
MUTATION_SELECT ?=
# A test that hangs on a mutant fails (the mutant is killed) after this many seconds.
# pytest-timeout's thread method: the in-process server tests run an event loop in the
# main thread that can swallow the signal method's exception, and then mutmut waits out
# its own bound (15 x the tests' time: 10 min for a server mutant) instead.
MUTATION_TEST_TIMEOUT ?= 10

mutation: $(BIN)/calc ## Mutation testing (mutmut 3) of src/graceful and src/calc (see docs/development.md, "Mutation testing"); out/mutation/<part>/score.txt
	$(BIN)/pip install --quiet 'mutmut>=3.6,<4'
	@set -e; status=0; for part in $(MUTATION_PARTS); do \
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
	    echo 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q", "--timeout", "$(MUTATION_TEST_TIMEOUT)", "-o", "timeout_method=thread"]'; \
	  } >> "$$dir/pyproject.toml"; \
	  echo "mutation testing src/$$part against: $$tests"; \
	  start=$$(date +%s); \
	  (cd "$$dir" && $(abspath $(BIN))/mutmut run --max-children $(MUTATION_CHILDREN) $(MUTATION_SELECT) >mutmut.log 2>&1) || \
	    { tail -c 2000 "$$dir/mutmut.log"; exit 1; }; \
	  took=$$(( $$(date +%s) - start )); \
	  (cd "$$dir" && $(abspath $(BIN))/mutmut results >survivors.txt); \
	  $(BIN)/python -m tests.mutation_report --part $$part --mutants "$$dir/mutants" \
	    --equivalents tests/$$part/mutation-equivalents.txt --seconds $$took \
	    | tee "$$dir/score.txt"; \
	  [ "$${PIPESTATUS[0]}" = 0 ] || status=1; \
	done; exit $$status
