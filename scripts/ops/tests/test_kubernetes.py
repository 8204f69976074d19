import unittest
from pathlib import Path

from ops import kubernetes

ROOT = Path(__file__).resolve().parents[3]

HELPS = {
    "receiver": {"KAFKA_BROKERS": "127.0.0.1:9092", "RECEIVER_LISTEN": "0.0.0.0:30000", "RECEIVER_SHUTDOWN_TIMEOUT": "10s"},
    "processor": {"KAFKA_BROKERS": "127.0.0.1:9092", "PROCESSOR_LISTEN": "0.0.0.0:30001", "PROCESSOR_SHUTDOWN_TIMEOUT": "30s",
                  "PROCESSOR_GROUP_ID": "fleetstream-processor", "PROCESSOR_INPUT_TOPIC": "gpscoords"},
    "tracker": {"KAFKA_BROKERS": "127.0.0.1:9092", "TRACKER_LISTEN": "0.0.0.0:30002", "TRACKER_SHUTDOWN_TIMEOUT": "30s"},
}


def deployment(svc, env, grace=35, port=30001):
    return {"kind": "Deployment", "metadata": {"name": svc}, "spec": {"template": {
        "metadata": {"labels": {"app.kubernetes.io/name": svc}},
        "spec": {"terminationGracePeriodSeconds": grace, "containers": [{
            "name": svc, "image": f"fleetstream/{svc}:0.1.0", "env": env,
            "ports": [{"name": "ops", "containerPort": port}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "ops"}},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "ops"}}}]}}}}


def scaled_object(top=6, **meta):
    meta = {"bootstrapServersFromEnv": "KAFKA_BROKERS", "consumerGroupFromEnv": "PROCESSOR_GROUP_ID",
            "topicFromEnv": "PROCESSOR_INPUT_TOPIC", **meta}
    return {"kind": "ScaledObject", "metadata": {"name": "processor"},
            "spec": {"scaleTargetRef": {"name": "processor"}, "maxReplicaCount": top, "triggers": [{"type": "kafka", "metadata": meta}]}}


def checks(docs, compose_topics=(("gpscoords", "6", []),)):
    return kubernetes.Checks(str(ROOT), "test", docs, HELPS, None, list(compose_topics))


class Variables(unittest.TestCase):
    def test_an_unknown_variable_is_named(self):
        docs = [deployment("receiver", [{"name": "RECEIVER_LISTEN", "value": "0.0.0.0:30000"}, {"name": "RECEIVER_LISTN", "value": "x"}]),
                deployment("processor", []), deployment("tracker", [])]
        _, problems = checks(docs).variables()
        self.assertEqual(problems, ["receiver sets RECEIVER_LISTN, which `receiver --help` does not list"])


class Probes(unittest.TestCase):
    def test_grace_period_must_cover_the_shutdown_timeout(self):
        docs = [deployment("processor", [], grace=20)]
        _, problems = checks(docs).probes_and_shutdown()
        self.assertTrue(any("terminationGracePeriodSeconds 20" in p and "30s" in p for p in problems), problems)

    def test_probes_on_the_listener(self):
        docs = [deployment("processor", [], grace=35, port=30001)]
        _, problems = checks(docs).probes_and_shutdown()
        self.assertEqual(problems, [])
        docs = [deployment("processor", [], grace=35, port=9999)]
        _, problems = checks(docs).probes_and_shutdown()
        self.assertTrue(any("expected /readyz on 30001" in p for p in problems), problems)


class Scaling(unittest.TestCase):
    def docs(self, top=6, env=(), topics=()):
        return [deployment("processor", list(env)), scaled_object(top), *topics]

    def test_capped_at_the_raw_topics_partitions(self):
        _, problems = checks(self.docs(top=12)).scaling()
        self.assertTrue(any("maxReplicaCount 12, but the raw topic has 6 partitions" in p for p in problems), problems)

    def test_a_kafka_topic_wins_over_kafka_init(self):
        topic = {"kind": "KafkaTopic", "metadata": {"name": "gpscoords"}, "spec": {"partitions": 12}}
        _, problems = checks(self.docs(top=12, topics=[topic])).scaling()
        self.assertFalse(any("maxReplicaCount" in p for p in problems), problems)

    def test_a_shared_transactional_id_is_refused(self):
        _, problems = checks(self.docs(env=[{"name": "PROCESSOR_TRANSACTIONAL_ID", "value": "p"}])).scaling()
        self.assertTrue(any("PROCESSOR_TRANSACTIONAL_ID is set" in p for p in problems), problems)

    def test_the_trigger_must_watch_the_processors_group(self):
        so = scaled_object(consumerGroupFromEnv=None)
        del so["spec"]["triggers"][0]["metadata"]["consumerGroupFromEnv"]
        so["spec"]["triggers"][0]["metadata"]["consumerGroup"] = "other"
        _, problems = checks([deployment("processor", []), so]).scaling()
        self.assertTrue(any("watches group other" in p for p in problems), problems)


class Rules(unittest.TestCase):
    def test_whitespace_in_strings_does_not_count(self):
        spec = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up\n  == 0"}]}]}
        same = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up\n\n == 0"}]}]}
        self.assertEqual(kubernetes.rule_differences(spec, same), [])

    def test_a_changed_expression_is_named(self):
        spec = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0"}]}]}
        other = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 1"}]}]}
        problems = kubernetes.rule_differences(spec, other)
        self.assertTrue(problems[0].startswith("A: expr is 'up == 0' in the PrometheusRule"), problems)

    def test_the_committed_rule_is_generated_from_alerts_yml(self):
        self.assertEqual((ROOT / kubernetes.RULE_FILE).read_text(), kubernetes.rule_text(ROOT))


class Acls(unittest.TestCase):
    def test_access_print_lines(self):
        m = kubernetes.ACL_LINE.search('kafka-acls.sh --bootstrap-server "$KAFKA_BROKERS" --add --allow-principal User:processor '
                                       '--operation Write --transactional-id fleetstream-processor --resource-pattern-type prefixed')
        self.assertEqual(m.groups(), ("User:processor", "Write", "transactional-id", "fleetstream-processor", " --resource-pattern-type prefixed"))


class Durations(unittest.TestCase):
    def test_humantime(self):
        self.assertEqual(kubernetes.duration_seconds("10s"), 10)
        self.assertEqual(kubernetes.duration_seconds("1m 30s"), 90)
        self.assertEqual(kubernetes.duration_seconds("500ms"), 0.5)


if __name__ == "__main__":
    unittest.main()
