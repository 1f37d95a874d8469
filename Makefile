# eventpipe — the two commands of a fresh machine are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run up down test chaos soak unit lint bench services services-test services-down clean install

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,local]'
	@touch $(STAMP)

install: $(STAMP)

## run: Kafka + the local ClickHouse 26 server + gateway + processors + sink in the foreground; Ctrl-C stops
## the stack (Kafka and ClickHouse keep running for the CLI; `make down` stops them too).
run: $(STAMP)
	bash deploy/local/kafka.sh start
	bash deploy/local/clickhouse.sh start
	$(BIN)/eventpipe run

## up / down: the same stack in the background.
up: $(STAMP)
	bash deploy/local/kafka.sh start
	bash deploy/local/clickhouse.sh start
	$(BIN)/eventpipe up

down:
	@if [ -x $(BIN)/eventpipe ]; then $(BIN)/eventpipe down; fi
	bash deploy/local/kafka.sh stop
	bash deploy/local/clickhouse.sh stop
	bash deploy/local/clickhouse-cluster.sh stop
	bash deploy/local/zookeeper.sh stop

## test: start Kafka, the local ClickHouse 26 server, ZooKeeper + a 2-node ClickHouse 18.16 cluster (Debian's
## server, for the Replicated cluster test), then the whole pytest suite.
test: $(STAMP)
	bash deploy/local/kafka.sh start
	bash deploy/local/clickhouse.sh start
	bash deploy/local/zookeeper.sh start
	bash deploy/local/clickhouse-cluster.sh start
	$(BIN)/pytest -q

## chaos: the whole fault suite (tests/test_it_chaos.py: stages, the broker and ClickHouse killed or stopped
## under a retrying client's stream; a 3-broker Kafka with one broker killed); prints one table of figures.
chaos: $(STAMP)
	bash deploy/local/kafka.sh start
	bash deploy/local/clickhouse.sh start
	$(BIN)/pytest -q -m "" tests/test_it_chaos.py tests/test_it_kafka_cluster.py tests/test_it_identity.py

## soak: the real processors against the reference model on many more Hypothesis histories
## (tests/test_it_identity_properties.py; EVENTPIPE_SOAK_HISTORIES per stack, default 2000).
soak: $(STAMP)
	bash deploy/local/kafka.sh start
	bash deploy/local/clickhouse.sh start
	$(BIN)/pytest -q -s -m soak tests/test_it_identity_properties.py

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
