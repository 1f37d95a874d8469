# eventpipe — the two commands of a fresh machine are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run up down test unit lint bench services services-test services-down clean install

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## run: Kafka + gateway + processors + sink (embedded ClickHouse) in the foreground; Ctrl-C stops.
run: $(STAMP)
	bash deploy/local/kafka.sh start
	$(BIN)/eventpipe run

## up / down: the same stack in the background.
up: $(STAMP)
	bash deploy/local/kafka.sh start
	$(BIN)/eventpipe up

down:
	@if [ -x $(BIN)/eventpipe ]; then $(BIN)/eventpipe down; fi
	bash deploy/local/kafka.sh stop
	bash deploy/local/clickhouse.sh stop
	bash deploy/local/clickhouse-cluster.sh stop
	bash deploy/local/zookeeper.sh stop

## test: start Kafka, the ClickHouse server, ZooKeeper + a 2-node ClickHouse cluster, then the whole pytest suite.
test: $(STAMP)
	bash deploy/local/kafka.sh start
	bash deploy/local/clickhouse.sh start
	bash deploy/local/zookeeper.sh start
	bash deploy/local/clickhouse-cluster.sh start
	$(BIN)/pytest -q

unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	bash deploy/local/kafka.sh start
	bash deploy/local/clickhouse.sh start
	$(BIN)/python -m bench

clean: down
	rm -rf .local
