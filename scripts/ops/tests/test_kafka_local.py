import os
import socket
import tempfile
import unittest
from pathlib import Path

from ops import kafka_local

ROOT = Path(__file__).resolve().parents[3]

TEMP = tempfile.TemporaryDirectory(prefix="kafka-local-test-")  # removed when the tests end


def fake_binary(stdout="", status=0, stderr=""):
    """An executable standing in for kafka-local: prints STDOUT (and STDERR), exits STATUS,
    and writes its arguments to the file returned with it."""
    d = Path(tempfile.mkdtemp(dir=TEMP.name))
    (d / "out").write_text(stdout)
    (d / "err").write_text(stderr)
    exe = d / "kafka-local"
    exe.write_text(f'#!/bin/sh\necho "$@" >"{d}/args"\ncat "{d}/out"\ncat "{d}/err" >&2\nexit {status}\n')
    exe.chmod(0o755)
    return exe, d / "args"


class BinaryTest(unittest.TestCase):
    def test_version(self):
        exe, args = fake_binary("9.8.7\n")
        self.assertEqual(kafka_local.kafka_version(exe), "9.8.7")
        self.assertEqual(args.read_text().split(), ["version"])

    def test_a_version_that_is_not_one_is_an_error(self):
        exe, _ = fake_binary("Apache Kafka 9.8.7\n")
        with self.assertRaisesRegex(ValueError, "not a version"):
            kafka_local.kafka_version(exe)

    def test_a_failing_binary_is_an_error_with_its_message(self):
        exe, _ = fake_binary(status=2, stderr="error: unrecognized subcommand 'settings'\n")
        with self.assertRaisesRegex(RuntimeError, "unrecognized subcommand"):
            kafka_local.broker_settings(exe)
        with self.assertRaisesRegex(RuntimeError, "cannot run"):
            kafka_local.kafka_version(Path(TEMP.name) / "missing")

    def test_settings_are_asked_for_the_cluster_size(self):
        exe, args = fake_binary("auto.create.topics.enable=false\nnum.partitions=12\n\nlog.cleaner.x=a=b\n")
        settings = kafka_local.broker_settings(exe, nodes=3, partitions=12)
        self.assertEqual(args.read_text().split(), ["--nodes", "3", "--partitions", "12", "settings"])
        self.assertEqual(settings, {"auto.create.topics.enable": "false", "num.partitions": "12", "log.cleaner.x": "a=b"})

    def test_settings_it_cannot_read_are_an_error(self):
        for out, message in (("num.partitions=6\nnot a setting\n", "not KEY=VALUE"),
                             ("a=1\na=2\n", "twice"),
                             ("\n", "no settings")):
            exe, _ = fake_binary(out)
            with self.assertRaisesRegex(ValueError, message):
                kafka_local.broker_settings(exe)

    def test_topic_settings(self):
        exe, args = fake_binary("vehicle-latest cleanup.policy=compact\nvehicle-latest segment.ms=600000\n\ngeofences cleanup.policy=compact\n")
        self.assertEqual(kafka_local.topic_settings(exe), {
            "vehicle-latest": {"cleanup.policy": "compact", "segment.ms": "600000"}, "geofences": {"cleanup.policy": "compact"}})
        self.assertEqual(args.read_text().split(), ["topic-settings"])
        for out, message in (("vehicle-latest\n", "not TOPIC KEY=VALUE"), ("t a=1\nt a=2\n", "twice")):
            exe, _ = fake_binary(out)
            with self.assertRaisesRegex(ValueError, message):
                kafka_local.topic_settings(exe)

    def test_an_existing_binary_is_not_rebuilt(self):
        root = Path(tempfile.mkdtemp(dir=TEMP.name))  # no Cargo workspace: a build would fail
        exe = root / kafka_local.BINARY
        exe.parent.mkdir(parents=True)
        exe.write_text("")
        self.assertEqual(kafka_local.binary(root), exe)

    def test_the_real_binary(self):
        exe = kafka_local.binary(ROOT)
        self.assertRegex(kafka_local.kafka_version(exe), r"^\d+\.\d+\.\d+$")
        one = kafka_local.broker_settings(exe, nodes=1, partitions=6)
        self.assertEqual(one.get("auto.create.topics.enable"), "false")
        self.assertEqual((one.get("default.replication.factor"), one.get("min.insync.replicas")), ("1", "1"))
        self.assertEqual(one.get("num.partitions"), "6")
        three = kafka_local.broker_settings(exe, nodes=3, partitions=12)
        self.assertEqual((three.get("default.replication.factor"), three.get("min.insync.replicas")), ("3", "2"))
        self.assertEqual(three.get("num.partitions"), "12")
        self.assertEqual(set(one), set(three))
        self.assertFalse(kafka_local.NODE_KEYS & set(one), "a per-node key is also a broker setting")


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
