import tempfile
import unittest
from pathlib import Path

from ops import check_ops, kafka_local

ROOT = Path(__file__).resolve().parents[3]

SHORT_HELP = """Apache Kafka on this machine

Usage: kafka-local [OPTIONS] <COMMAND>

Options:
      --nodes <NODES>        Number of nodes [env: KAFKA_NODES=] [default: 1]
      --dir <DIR>            Directory of the nodes' data [env: KAFKA_DIR=] [default: .local/kafka]
      --fresh                Start from empty storage [env: KAFKA_FRESH=]
      --topic-raw <RAW>      Raw positions [env: TOPIC_RAW=gpscoords-x] [default: gpscoords]
  -h, --help                 Print help
"""

LONG_HELP = """WebSocket gateway

Usage: receiver [OPTIONS]

Options:
      --listen <LISTEN>
          Address to listen on
          
          [env: RECEIVER_LISTEN=]
          [default: 0.0.0.0:30000]

  -l, --log-level <LOG_LEVEL>
          Log level
          
          [env: LOG_LEVEL=]
          [default: info]

      --auth-tokens <AUTH_TOKENS>
          Tokens

          [env: RECEIVER_AUTH_TOKENS]

  -h, --help
          Print help (see a summary with '-h')
"""


class HelpTest(unittest.TestCase):
    def test_short_form(self):
        self.assertEqual(check_ops.parse_help(SHORT_HELP), {
            "KAFKA_NODES": "1", "KAFKA_DIR": ".local/kafka", "KAFKA_FRESH": None, "TOPIC_RAW": "gpscoords"})

    def test_long_form(self):
        self.assertEqual(check_ops.parse_help(LONG_HELP), {
            "RECEIVER_LISTEN": "0.0.0.0:30000", "LOG_LEVEL": "info", "RECEIVER_AUTH_TOKENS": None})

    def test_port_of(self):
        self.assertEqual(check_ops.port_of("0.0.0.0:30000"), 30000)
        self.assertEqual(check_ops.port_of("[::]:9090"), 9090)


class ComposeTest(unittest.TestCase):
    def test_variables_and_their_defaults(self):
        text = "\n".join([
            "# ${COMMENTED} is ignored",
            "a: ${A:-1}",
            "b: ${B-x} $${NOT_A_VARIABLE}",
            "c: ${A:-2} ${NO_DEFAULT}",
        ])
        used, problems = check_ops.compose_variables(text)
        self.assertEqual(used, {"A": "2", "B": "x", "NO_DEFAULT": None})
        self.assertEqual(len(problems), 2)
        self.assertIn("two defaults", problems[0])
        self.assertIn("NO_DEFAULT", problems[1])

    def test_pinned_images(self):
        for image in ("apache/kafka:4.1.1", "postgres:17.2-alpine", "prom/prometheus:v2.55.1",
                      "debian@sha256:" + "0" * 64):
            self.assertTrue(check_ops.image_pinned(image), image)
        for image in ("apache/kafka", "apache/kafka:latest", "grafana/grafana:main", "localhost:5000/x"):
            self.assertFalse(check_ops.image_pinned(image), image)

    def test_dockerfile_images(self):
        dockerfile = "# syntax=docker/dockerfile:1.7\nFROM rust:1.95 AS build\nFROM debian:13.1-slim AS runtime\nFROM runtime AS receiver\n"
        self.assertEqual(check_ops.dockerfile_images(dockerfile), ["docker/dockerfile:1.7", "rust:1.95", "debian:13.1-slim"])

    def test_kafka_init_calls(self):
        log = "\n".join([
            "kafka-topics.sh --bootstrap-server kafka:9092 --create --if-not-exists --topic raw --partitions 6 --replication-factor 1 --config retention.ms=1",
            "kafka-configs.sh --bootstrap-server kafka:9092 --alter --entity-type topics --entity-name raw --add-config retention.ms=1",
            "kafka-topics.sh --bootstrap-server kafka:9092 --create --topic latest --partitions 6 --config cleanup.policy=compact --config segment.ms=9",
            "kafka-configs.sh --bootstrap-server kafka:9092 --alter --entity-type topics --entity-name latest --add-config cleanup.policy=compact,segment.ms=9",
            "kafka-topics.sh --bootstrap-server kafka:9092 --describe --topic raw|latest",
            "",
        ])
        self.assertEqual(check_ops.parse_kafka_tool_calls(log), [
            ("raw", "6", ["retention.ms=1", "retention.ms=1"]),
            ("latest", "6", ["cleanup.policy=compact", "segment.ms=9", "cleanup.policy=compact", "segment.ms=9"])])


class KafkaAgreementTest(unittest.TestCase):
    """docker-compose.yml's Kafka against kafka-local, on a compose model built from the binary's
    `version` and `settings`."""

    @classmethod
    def setUpClass(cls):
        cls.exe = kafka_local.binary(ROOT)

    def services(self):
        version = kafka_local.kafka_version(self.exe)
        env = {kafka_local.env_name(k): v for k, v in kafka_local.broker_settings(self.exe).items()}
        env.update({"KAFKA_NODE_ID": 1, "KAFKA_LISTENERS": "PLAINTEXT://:9092", "KAFKA_HEAP_OPTS": "-Xmx1g",
                    "CLUSTER_ID": "x"})
        return {"kafka": {"image": f"apache/kafka:{version}", "environment": env},
                "kafka-init": {"image": f"apache/kafka:{version}"}}

    def test_agreeing(self):
        _, problems = check_ops.kafka_agreement(self.exe, self.services(), partitions=6)
        self.assertEqual(problems, [])

    def test_other_tag(self):
        services = self.services()
        services["kafka-init"]["image"] = "apache/kafka:0.0.1"
        _, problems = check_ops.kafka_agreement(self.exe, services, partitions=6)
        self.assertEqual(len(problems), 1)
        self.assertIn("kafka-init", problems[0])

    def test_missing_different_and_extra_settings(self):
        services = self.services()
        env = services["kafka"]["environment"]
        del env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]
        env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] = 3000
        env["KAFKA_LOG_RETENTION_HOURS"] = 1
        _, problems = check_ops.kafka_agreement(self.exe, services, partitions=6)
        self.assertEqual(len(problems), 3, problems)
        self.assertIn("KAFKA_AUTO_CREATE_TOPICS_ENABLE missing", problems[0])
        self.assertIn("group.initial.rebalance.delay.ms=0", problems[1])
        self.assertIn("log.retention.hours", problems[2])

    def test_a_nodes_own_keys_are_its_own(self):
        services = self.services()
        services["kafka"]["environment"].update({
            "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092", "KAFKA_LOG_DIRS": "/var/lib/kafka/data",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@kafka:9093"})
        _, problems = check_ops.kafka_agreement(self.exe, services, partitions=6)
        self.assertEqual(problems, [])

    def test_a_binary_that_cannot_answer_is_a_problem(self):
        _, problems = check_ops.kafka_agreement(ROOT / "no-such-kafka-local", self.services(), partitions=6)
        self.assertEqual(len(problems), 1)
        self.assertIn("cannot run", problems[0])

    def test_partitions_come_from_the_caller(self):
        _, problems = check_ops.kafka_agreement(self.exe, self.services(), partitions=12)
        self.assertEqual(len(problems), 1)
        self.assertIn("num.partitions=12", problems[0])


class BrokerDataTest(unittest.TestCase):
    def node(self, sizes, cluster="abc"):
        temp = tempfile.TemporaryDirectory()
        self.addCleanup(temp.cleanup)
        d = Path(temp.name)
        data = d / "node-1" / "data"
        data.mkdir(parents=True)
        (data / "meta.properties").write_text(f"version=1\ncluster.id={cluster}\nnode.id=1\n")
        for part, n in sizes.items():
            (data / part).mkdir()
            (data / part / "00000000000000000000.log").write_bytes(b"x" * n)
            (data / part / "00000000000000000000.index").write_bytes(b"i" * 99)
        return d

    def test_sizes_per_topic(self):
        d = self.node({"gpscoords-0": 10, "gpscoords-1": 5, "gpscoords-dlq-0": 7})
        self.assertEqual(check_ops.broker_data(d, ["gpscoords", "gpscoords-dlq"]),
                         {"cluster_id": "abc", "bytes": {"gpscoords": 15, "gpscoords-dlq": 7}})

    def test_kept(self):
        before = {"cluster_id": "abc", "bytes": {"a": 10}}
        self.assertEqual(check_ops.data_kept(before, {"cluster_id": "abc", "bytes": {"a": 12}}), [])
        self.assertEqual(len(check_ops.data_kept(before, {"cluster_id": "abc", "bytes": {"a": 9}})), 1)
        self.assertEqual(len(check_ops.data_kept(before, {"cluster_id": "xyz", "bytes": {"a": 10}})), 1)
        self.assertEqual(len(check_ops.data_kept({"cluster_id": None, "bytes": {"a": 0}}, before)), 2)


class AlertExpectationsTest(unittest.TestCase):
    def test_every_alert_has_an_expectation(self):
        try:
            rules = check_ops.alert_rules(ROOT)
        except ImportError:
            self.skipTest("PyYAML is not installed")
        self.assertEqual({r["alert"] for r in rules}, set(check_ops.ALERT_EXPECT))
        for at_outage, at_end in check_ops.ALERT_EXPECT.values():
            self.assertIn(at_outage, ("fires", "quiet", "any"))
            self.assertIn(at_end, ("fires", "quiet", "any"))


if __name__ == "__main__":
    unittest.main()
