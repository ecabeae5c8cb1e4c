# Every target here is a command the README names.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export PATH := $(abspath $(VENV))/bin:$(PATH)

PROTO_SRC := $(shell find protos -name '*.proto')

.PHONY: install protos run test chaos soak lint fmt bench bench-smoke clean up down

# The editable install maps the generated `orchestrator` package (gen/orchestrator), so the
# protos are generated before the project itself is installed a second time.
$(VENV)/.installed: pyproject.toml $(PROTO_SRC)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev,bench]'
	$(MAKE) --no-print-directory protos
	$(PIP) install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

# Generated code: gen/orchestrator/v1/jobs_pb2*.py(i). Never edited by hand, never committed.
protos:
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen \
		--mypy_out=quiet:gen --mypy_grpc_out=quiet:gen $(PROTO_SRC)
	find gen -mindepth 1 -type d -exec touch {}/__init__.py \;

run: install
	$(PY) -m services.devstack --demo

test: install
	$(PY) -m pytest

# The chaos suite alone (real processes, SIGKILLs, a private RabbitMQ node it stops and starts).
chaos: install
	$(PY) -m pytest -m chaos -s tests/chaos

# The soak test alone (a few minutes of load with faults; memory sampled).
soak: install
	$(PY) -m pytest -s tests/soak

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m bench

bench-smoke: install
	$(PY) -m bench --smoke

# The compose stack (docker-compose.yml): RabbitMQ, PostgreSQL, the simulator, the gateway, the
# workers, Prometheus, Grafana and Jaeger. Needs Docker with Compose v2 (or
# COMPOSE=docker-compose). `make down` keeps the data volumes (`$(COMPOSE) down -v` drops them).
COMPOSE ?= docker compose

up:
	$(COMPOSE) up -d --build

down:
	$(COMPOSE) down

clean:
	rm -rf gen $(VENV) .pytest_cache .mypy_cache .ruff_cache
