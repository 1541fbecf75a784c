# One entry point for people and CI. Every target sets up what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
SHOP := $(VENV)/bin/shop
DEVSTACK := $(VENV)/bin/devstack
UV := python3 -m uv

.PHONY: help venv up down status run migrate test lint unit deploy-tests bench soak helm-tools rules-test cluster cluster-down cluster-status test-cluster compose-images test-compose

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.synced: pyproject.toml uv.lock tools/devstack/pyproject.toml
	@python3 -m uv --version >/dev/null 2>&1 || { echo "installing uv"; python3 -m pip install --quiet --disable-pip-version-check 'uv>=0.5'; }
	$(UV) sync --frozen --quiet
	@touch $@

venv: $(VENV)/.synced ## create the virtual environment from the lock file

up: venv ## install and start MariaDB, RabbitMQ, Kafka, migrate, start both services in the background (PROMETHEUS=1: and Prometheus on 9090; TRACING=1: and Jaeger on 16686, the services sending it their traces)
	$(DEVSTACK) up $(if $(PROMETHEUS),--prometheus,) $(if $(TRACING),--tracing,)

down: venv ## stop everything `make up` started
	$(DEVSTACK) down

status: venv ## say what runs
	$(DEVSTACK) status

cluster: venv ## the clustered system: 3 Kafka, 3 RabbitMQ, 3 Galera nodes, HAProxy, 2 replicas per service (docs/cluster.md); PROMETHEUS=1: and Prometheus on 9090; TRACING=1: and Jaeger on 16686
	$(DEVSTACK) cluster up $(if $(PROMETHEUS),--prometheus,) $(if $(TRACING),--tracing,)

cluster-down: venv ## stop everything `make cluster` started
	$(DEVSTACK) cluster down

cluster-status: venv ## every node and replica of the cluster, with health
	$(DEVSTACK) cluster status

run: venv ## like `make up`, but run both services in the foreground (Ctrl-C stops them; TRACING=1: traced, as with `make up`)
	$(DEVSTACK) up --no-services $(if $(TRACING),--tracing,)
	$(DEVSTACK) run $(if $(TRACING),--tracing,)

migrate: venv ## migrate the configured database to the newest schema
	$(SHOP) migrate

lint: venv ## ruff and mypy (strict)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

helm-tools: ## build helm (for the chart's tests) from the Go module proxy, once
	tools/install-helm

unit: venv ## the unit tests alone (no servers, no helm)
	$(VENV)/bin/pytest tests/unit

deploy-tests: venv helm-tools ## the deployment tests alone (helm chart, compose file, cluster configs, wheel; no servers)
	$(VENV)/bin/pytest tests/deploy

rules-test: ## the Prometheus alert and recording rules: promtool check and promtool's unit tests (deploy/prometheus)
	@promtool="$$(tools/install-prometheus)/promtool" && "$$promtool" check rules deploy/prometheus/rules.yml \
	  && "$$promtool" test rules deploy/prometheus/rules_test.yml

test: venv lint helm-tools rules-test ## set up the stack, then the whole test suite against the real servers
	@command -v docker-compose >/dev/null || { echo "installing docker-compose (compose-file check)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || { echo "installing chromium and chromium-driver (the browser tests: /docs, the trace viewer)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }
	$(DEVSTACK) up --no-services
	$(VENV)/bin/pytest -m "not compose"
	$(MAKE) test-compose

compose-images: venv ## the local stand-ins for the official images and the app image (deploy/docker; a registry-less machine), about 3 min once
	tools/dockerd start
	tools/install-compose >/dev/null
	tools/compose-images

test-compose: venv ## docker compose for real: build, up --wait, the README's examples, SIGKILL under load, broker restarts, down -v (about 3 min after the first build)
	tools/dockerd start
	tools/install-compose >/dev/null
	$(if $(filter official,$(COMPOSE_IMAGES)),,tools/compose-images)
	status=0; $(if $(filter official,$(COMPOSE_IMAGES)),,COMPOSE_ENV_FILES=deploy/compose/local-images.env) \
	  $(VENV)/bin/pytest -m compose tests/compose -s || status=$$?; tools/dockerd stop; exit $$status

test-cluster: venv ## the cluster's tests alone: its access checks and the fault test (they start and stop the cluster, about 7 min; make test runs them last)
	$(VENV)/bin/pytest -m cluster

bench: up ## the benchmark and its report, about 7 min (QUICK=1: about 2 min); BASELINE=<commit>: that commit beside this checkout, about 22 min; CLUSTER=1: on `make up`'s stack and on the cluster, both layouts in one report, about 25 min (QUICK=1: about 10)
	$(if $(BASELINE),$(VENV)/bin/python -m bench.compare --base $(BASELINE),$(if $(CLUSTER),$(VENV)/bin/python -m bench.layouts,$(VENV)/bin/python -m bench.run)) $(if $(QUICK),--quick,)

soak: $(if $(CLUSTER),venv,up) ## many orders under fire, then their audit: ORDERS (default 1,000,000) from 2,000 customers while parts are SIGKILLed and paused in turn (FAULT_EVERY s, default 20); CLUSTER=1: on the cluster, a node of each engine struck; bench/results/<time>-soak/report.html (docs/reliability.md)
	$(VENV)/bin/python -m bench.soak $(if $(ORDERS),--orders $(ORDERS),) $(if $(FAULT_EVERY),--fault-every $(FAULT_EVERY),) $(if $(CLUSTER),--cluster,)

.PHONY: bench-compare
bench-compare: up ## BASE (default 0fc452c) beside this checkout, same servers and load, about 22 min (QUICK=1: about 2)
	$(VENV)/bin/python -m bench.compare --base $(or $(BASE),0fc452c) $(if $(QUICK),--quick,)
