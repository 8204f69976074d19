"""Python helpers of the scripts in scripts/ (the scripts themselves are bash glue).

- promtext: the one parser of Prometheus' text exposition format (check-ops, bench, demo)
- kafka_local: what the scripts need to know about kafka-local (the pinned Kafka version and
  the broker settings, asked of the binary) and a thin wrapper of scripts/kafka-local
- dashboards: Grafana dashboards and PromQL (queries, variables, the metric names selected)
- check_ops: the helper of scripts/check-ops (static agreement checks, the live run's queries)
- render: draws the overview dashboard from a check-ops run (matplotlib, optional)
- demo_summary: the counts scripts/demo prints at the end
- demo_readme: checks the README's example of those counts (make test), or puts a real run's there
- bench: make bench (scripts/bench runs it)
- capacity: the measured capacity and disk figures of docs/operations.md

Run with scripts/ on PYTHONPATH (`PYTHONPATH=scripts python3 -m ops.check_ops ...`).
Unit tests: `PYTHONPATH=scripts python3 -m unittest discover -s scripts/ops/tests -t scripts`.
"""
