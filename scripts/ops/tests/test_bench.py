import unittest

from ops import bench


class BenchTest(unittest.TestCase):
    def test_the_latency_note_quotes_the_run(self):
        note = bench.missed_latency_note({"processor_batch_ms": 35.04, "processor_batch_records": 39.4,
                                          "receipt_to_kafka_ack_ms": 12.26}, 80.2)
        self.assertIn("p99 (80 ms)", note)
        self.assertIn("35.0 ms on average for a batch of 39 records", note)
        self.assertIn("took 12.3 ms", note)

    def test_metric_of_an_unreachable_service_is_zero(self):
        from ops import kafka_local
        self.assertEqual(bench.metric(kafka_local.free_port_pair(), "x_total"), 0.0)


if __name__ == "__main__":
    unittest.main()
