# slurmkit — run `make help` for the targets.
#
# Two commands matter on a fresh machine:
#   make demo   bring up the docker-slurm cluster and run the main job end to end
#   make test   every test: unit tests, then cluster tests (which bring the cluster up)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
# Three workers on 2 cores: the cluster tests (one xdist group, in order) mostly wait on
# Slurm, and so does the torch container's group (one `docker run`): the unit tests run
# beside both on the third worker and on whichever finishes first.
PARALLEL := -n 3 --dist loadgroup

.DEFAULT_GOAL := help

.PHONY: host-deps
.PHONY: help venv test test-unit test-cluster test-torch test-slow demo cluster-up cluster-down cluster-clean \
        cluster-status bench lint campaign mutation

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# compat mode: a plain .pth entry instead of an import hook, ~20 ms less start-up
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $@

venv: $(VENV)/.installed ## Create .venv with slurmkit and its dev dependencies

host-deps: ## Host tools the tests use (headless Chromium for the HTML report test, a C compiler, Lua 5.1)
	@command -v chromium >/dev/null || { echo "installing chromium (the HTML report test)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null; }
	@command -v cc >/dev/null || { echo "installing gcc (the SPANK plugin's unit test)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev >/dev/null; }
	@command -v lua5.1 >/dev/null || { echo "installing lua5.1 (the Lua policy's unit test: job_submit/lua embeds Lua 5.1)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends lua5.1 >/dev/null; }

# The PyTorch jobs' cluster scenarios (tests/cluster/test_torch.py) take ~5 minutes
# on 2 cores: they run with `make test-torch`, not in `make test`, which must stay
# under 10 minutes (the torch code itself is checked in `make test`, in the node image).
TORCH_CLUSTER_TESTS := tests/cluster/test_torch.py
# For the same reason `slurmkit serve`'s fault scenarios on the cluster (~2 minutes; the
# burst that reclaims borrowed training stays in `make test`, and so does the router's
# side with the real HAProxy, tests/unit/test_serve_router.py) run with `make test-slow`.
# The harness's own test of a hung slurmctld (tests/cluster/test_controller_hang.py) and
# the PyTorch examples end to end in the node image (tests/unit/test_torch_examples.py,
# the same scenarios as test_torch.py) too.
SLOW_CLUSTER_TESTS := $(TORCH_CLUSTER_TESTS) tests/cluster/test_serve_faults.py \
                      tests/cluster/test_controller_hang.py tests/unit/test_torch_examples.py

test: $(VENV)/.installed host-deps ## Run every test but the slow cluster scenarios of `make test-slow` (builds and starts the cluster when needed)
	$(PY) -m slurmkit.testing.cluster up
	$(PY) -m pytest tests $(addprefix --ignore=,$(SLOW_CLUSTER_TESTS)) $(PARALLEL) $(PYTEST_ARGS)

test-torch: $(VENV)/.installed ## The PyTorch jobs on the cluster (DDP/FSDP2 losing a node, in place and by requeue; ~5 min; not in `make test`)
	$(PY) -m slurmkit.testing.cluster up
	$(PY) -m pytest $(TORCH_CLUSTER_TESTS) -n 1 $(PYTEST_ARGS)

test-slow: $(VENV)/.installed ## The cluster scenarios kept out of `make test`: the PyTorch jobs and serve's faults (~7 min)
	$(PY) -m slurmkit.testing.cluster up
	$(PY) -m pytest $(SLOW_CLUSTER_TESTS) -n 1 $(PYTEST_ARGS)

test-unit: $(VENV)/.installed host-deps ## Run the unit tests only (no Slurm needed)
	$(PY) -m pytest tests/unit $(PARALLEL) $(PYTEST_ARGS)

test-cluster: $(VENV)/.installed ## Run the cluster tests only
	$(PY) -m slurmkit.testing.cluster up
	$(PY) -m pytest tests/cluster $(addprefix --ignore=,$(SLOW_CLUSTER_TESTS)) $(PYTEST_ARGS)

demo: $(VENV)/.installed ## Bring the cluster up and run the main job end to end (DEMO=torch: the PyTorch DDP job)
	$(PY) -m slurmkit.testing.cluster up
	DEMO="$(DEMO)" $(PY) -m slurmkit.testing.demo

cluster-up: $(VENV)/.installed ## Build what is missing, start the cluster, wait until ready
	$(PY) -m slurmkit.testing.cluster up

cluster-status: $(VENV)/.installed ## Health of each container and Slurm's node states
	$(PY) -m slurmkit.testing.cluster status

cluster-down: $(VENV)/.installed ## Stop and remove the containers (keeps volumes)
	$(PY) -m slurmkit.testing.cluster down

cluster-clean: $(VENV)/.installed ## Remove the containers and every volume (state, accounting)
	$(PY) -m slurmkit.testing.cluster down --volumes

campaign: $(VENV)/.installed ## Fault campaign at Slurm's default timeouts: 20 in-place faults + a requeue baseline (~35 min; not in `make test`)
	$(PY) -m slurmkit.testing.cluster up
	$(PY) -m slurmkit.testing.campaign $(CAMPAIGN_ARGS)

mutation: $(VENV)/.installed ## Mutation testing of the pure core (mutmut; unit tests only, ~N min; not in `make test`)
	$(PY) -m slurmkit.testing.mutation $(MUTATION_ARGS)

lint: $(VENV)/.installed ## Static checks (ruff: pyflakes, bugbear, imports)
	$(VENV)/bin/ruff check --select F,E9,B,I --line-length 100 slurmkit tests bench

bench: $(VENV)/.installed ## Run every benchmark in bench/ (one JSON line each; brings the cluster up)
	$(PY) -m slurmkit.testing.cluster up
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done
