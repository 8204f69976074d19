import unittest

from ops import bench


class BenchTest(unittest.TestCase):
    def test_the_latency_note_quotes_the_run(self):
        breakdown = {"processor_batch_records": 39.4,
                     "steps_ms": {"poll": 5.04, "decide": 0.5, "produce": 7.25, "offsets": 3.0, "commit": 4.1}}
        note = bench.missed_latency_note(10_000, breakdown, 80.2, 20.0)
        self.assertIn("p99 at 10000/s (80 ms) misses 1.5x floor 2 (30 ms)", note)
        self.assertIn("poll 5.0 ms, decide 0.5 ms, produce until acknowledged 7.2 ms (overlapping the offsets' 3.0 ms), commit 4.1 ms", note)
        self.assertIn("about 20 ms for 39 records", note)

    def test_metric_of_an_unreachable_service_is_zero(self):
        from ops import kafka_local
        self.assertEqual(bench.metric(kafka_local.free_port_pair(), "x_total"), 0.0)

    def test_the_tracing_rounds_rotate_the_order(self):
        self.assertEqual([bench.rotated(["off", "0", "0.01"], i) for i in range(4)],
                         [["off", "0", "0.01"], ["0", "0.01", "off"], ["0.01", "off", "0"], ["off", "0", "0.01"]])


if __name__ == "__main__":
    unittest.main()
