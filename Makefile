# fleetstream: `make demo` runs the whole pipeline locally, `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo
export KAFKA_BROKERS ?= 127.0.0.1:9092
# Local runs need no device tokens; the compose file turns authentication on.
export RECEIVER_AUTH ?= none

.PHONY: help demo test fuzz bench broker broker-stop receiver producer consumer tracker dlq build clippy fmt

help:
	@echo "make demo       broker + receiver + processor + simulated fleet, with live counts"
	@echo "make demo-readme  make demo with its defaults, then its counts into the README's example output"
	@echo "make test       every test (installs the local broker on first use)"
	@echo "make fuzz       every fuzz target for FUZZ_TIME seconds (default 300; docs/security.md#fuzzing)"
	@echo "make bench      the benchmark suite; rewrites docs/benchmarks.md and its plots"
	@echo "make broker     Apache Kafka (one node, scripts/kafka-local run) in the foreground (127.0.0.1:9092)"
	@echo "make receiver   the WebSocket receiver (ws://127.0.0.1:30000/ws)"
	@echo "make producer   the OBU simulator (fleet mode; SIM_* env vars configure it)"
	@echo "make consumer   the processor (validates, routes, dead-letters)"
	@echo "make tracker    the tracker: history, query API and live map (http://127.0.0.1:30002/)"
	@echo "make dlq ARGS='count --by reason'   inspect and redrive dead letters (docs/operations.md)"

demo:
	scripts/demo

# The README's example output of make demo, from a real run with the defaults (make test checks
# that it adds up: scripts/ops/demo_readme.py).
demo-readme:
	env -u DEMO_VEHICLES -u DEMO_DURATION -u DEMO_KEEP scripts/demo
	PYTHONPATH=scripts python3 -m ops.demo_readme --write

test:
	scripts/test-deps
	scripts/kafka-local install
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	rm -f target/tmp/drills.txt
	$(CARGO) test --workspace --locked
	@echo "failover drills:"; cat target/tmp/drills.txt
	scripts/fuzz --time 20
	scripts/check-ops
	scripts/check-kubernetes
	PYTHONPATH=scripts python3 -m ops.demo_readme --check
	scripts/config-docs --check

# Longer than make test's 20 s per target: FUZZ_TIME=3600 make fuzz for a night's run.
FUZZ_TIME ?= 300
fuzz:
	scripts/fuzz --time $(FUZZ_TIME)

bench:
	scripts/bench

broker:
	scripts/kafka-local run

broker-stop:
	scripts/kafka-local stop

build:
	$(CARGO) build --workspace --locked

receiver:
	$(CARGO) run --locked -p fleetstream-receiver --bin receiver

producer:
	$(CARGO) run --locked -p fleetstream-obu-sim --bin obu-sim

consumer:
	$(CARGO) run --locked -p fleetstream-processor --bin processor

tracker:
	mkdir -p .local && DATABASE_URL="$${DATABASE_URL:-sqlite://.local/tracker.db}" $(CARGO) run --locked -p fleetstream-tracker --bin tracker

dlq:
	@$(CARGO) run --locked -q -p fleetstream-dlq --bin dlq -- $(ARGS)

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all
