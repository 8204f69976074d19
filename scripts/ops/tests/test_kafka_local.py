import os
import socket
import tempfile
import unittest
from pathlib import Path

from ops import kafka_local

ROOT = Path(__file__).resolve().parents[3]

NODE_RS = '''
pub fn properties(spec: &ClusterSpec, nodes: &[NodeAddr], node: &NodeAddr) -> String {
    let mut lines = vec![
        "process.roles=broker,controller".to_string(),
        format!("node.id={}", node.id),
        format!("log.dirs={}", node.data_dir().display()),
    ];
    lines.join("\\n")
}

/// Settings.
pub fn broker_settings(replicas: usize, min_isr: usize, partitions: u32) -> Vec<(&'static str, String)> {
    vec![
        ("auto.create.topics.enable", "false".to_string()),
        ("num.partitions", partitions.to_string()),
        ("default.replication.factor", replicas.to_string()),
        ("min.insync.replicas", min_isr.to_string()),
        ("group.initial.rebalance.delay.ms", String::from("0")),
    ]
}

pub fn format() {}
'''


TEMP = tempfile.TemporaryDirectory(prefix="kafka-local-test-")  # removed when the tests end


def fake_root(node_rs=NODE_RS, lib_rs='pub const KAFKA_VERSION: &str = "9.8.7";\n'):
    root = Path(tempfile.mkdtemp(dir=TEMP.name))
    src = root / "crates/kafka-local/src"
    src.mkdir(parents=True)
    (src / "node.rs").write_text(node_rs)
    (src / "lib.rs").write_text(lib_rs)
    return root


class SourceTest(unittest.TestCase):
    def test_version(self):
        self.assertEqual(kafka_local.kafka_version(fake_root()), "9.8.7")
        with self.assertRaises(ValueError):
            kafka_local.kafka_version(fake_root(lib_rs="pub const OTHER: &str = \"1\";\n"))

    def test_settings_are_evaluated_for_the_parameters(self):
        settings = kafka_local.broker_settings(fake_root(), replicas=3, min_isr=2, partitions=12)
        self.assertEqual(settings, {
            "auto.create.topics.enable": "false", "num.partitions": "12", "default.replication.factor": "3",
            "min.insync.replicas": "2", "group.initial.rebalance.delay.ms": "0"})

    def test_an_expression_it_cannot_read_is_an_error(self):
        bad = NODE_RS.replace('String::from("0")', "(1 + 2).to_string()")
        with self.assertRaisesRegex(ValueError, "group.initial.rebalance.delay.ms"):
            kafka_local.broker_settings(fake_root(bad))

    def test_an_entry_over_two_lines_is_an_error(self):
        bad = NODE_RS.replace('("auto.create.topics.enable", "false".to_string()),',
                              '(\n            "auto.create.topics.enable",\n            "false".to_string(),\n        ),')
        with self.assertRaisesRegex(ValueError, "one entry per line"):
            kafka_local.broker_settings(fake_root(bad))

    def test_an_unknown_parameter_is_an_error(self):
        bad = NODE_RS.replace("partitions: u32)", "partitions: u32, racks: u32)")
        with self.assertRaisesRegex(ValueError, "racks"):
            kafka_local.broker_settings(fake_root(bad))

    def test_node_keys(self):
        self.assertEqual(kafka_local.node_keys(fake_root()), {"process.roles", "node.id", "log.dirs"})

    def test_the_real_crate_can_be_read(self):
        self.assertRegex(kafka_local.kafka_version(ROOT), r"^\d+\.\d+\.\d+$")
        settings = kafka_local.broker_settings(ROOT)
        self.assertEqual(settings.get("auto.create.topics.enable"), "false")
        self.assertEqual(settings.get("default.replication.factor"), "1")
        self.assertIn("listeners", kafka_local.node_keys(ROOT))


class EnvNameTest(unittest.TestCase):
    CASES = {
        "auto.create.topics.enable": "KAFKA_AUTO_CREATE_TOPICS_ENABLE",
        "abc-def": "KAFKA_ABC___DEF",
        "abc_def": "KAFKA_ABC__DEF",
        "listener.name.internal.ssl_key": "KAFKA_LISTENER_NAME_INTERNAL_SSL__KEY",
    }

    def test_both_ways(self):
        for key, var in self.CASES.items():
            self.assertEqual(kafka_local.env_name(key), var)
            self.assertEqual(kafka_local.property_name(var), key)

    def test_script_variables_are_not_properties(self):
        self.assertIsNone(kafka_local.property_name("KAFKA_HEAP_OPTS"))
        self.assertIsNone(kafka_local.property_name("CLUSTER_ID"))


class PortsTest(unittest.TestCase):
    def test_pair_is_free(self):
        port, held = kafka_local.reserve_port_pair()
        try:
            self.assertEqual([s.getsockname()[1] for s in held], [port, port + 1])
        finally:
            for s in held:
                s.close()
        port = kafka_local.free_port_pair()
        for p in (port, port + 1):
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))

    def test_pids_of_a_directory_without_nodes(self):
        d = tempfile.mkdtemp(dir=TEMP.name)
        self.assertEqual(kafka_local.node_pids(d), [])
        self.assertEqual(kafka_local.stray_pids(d), [])
        (Path(d) / "node-1").mkdir()
        (Path(d) / "node-1" / "pid").write_text(f"{os.getpid()}\n")
        self.assertEqual(kafka_local.node_pids(d), [os.getpid()])


def tearDownModule():
    TEMP.cleanup()


if __name__ == "__main__":
    unittest.main()
