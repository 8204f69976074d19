import math
import unittest

from ops import promtext

EXPOSITION = r'''# HELP fleetstream_receiver_positions_refused_total Positions refused, by reason.
# TYPE fleetstream_receiver_positions_refused_total counter
fleetstream_receiver_positions_refused_total{reason="malformed_json"} 4
fleetstream_receiver_positions_refused_total{reason="missing_field"} 3
fleetstream_receiver_positions_refused_total{reason="nan"} 0
fleetstream_receiver_positions_acked_total 403
fleetstream_receiver_positions_acked_total_extra 1
fleetstream_processor_end_to_end_seconds_sum{from="device"} 1.5
fleetstream_processor_end_to_end_seconds_sum{from="receiver"} 0.5
fleetstream_processor_end_to_end_seconds_bucket{from="device",le="+Inf"} 3
odd{path="C:\\dir",quote="say \"hi\"",nl="a\nb"} -Inf 1700000000000

weird_value NaN
'''


class ParseTest(unittest.TestCase):
    def setUp(self):
        self.samples = promtext.parse(EXPOSITION)

    def test_comments_and_blank_lines_are_skipped(self):
        self.assertEqual(len(self.samples), 10)

    def test_labels_and_values(self):
        s = self.samples[0]
        self.assertEqual(s.name, "fleetstream_receiver_positions_refused_total")
        self.assertEqual(s.labels, {"reason": "malformed_json"})
        self.assertEqual(s.value, 4.0)

    def test_escapes_in_label_values_and_timestamps(self):
        odd = promtext.select(self.samples, "odd")[0]
        self.assertEqual(odd.labels, {"path": "C:\\dir", "quote": 'say "hi"', "nl": "a\nb"})
        self.assertEqual(odd.value, -math.inf)

    def test_special_values(self):
        self.assertTrue(math.isnan(promtext.total(self.samples, "weird_value")))
        self.assertEqual(promtext.parse_value("+Inf"), math.inf)
        self.assertEqual(promtext.parse_value("1e3"), 1000.0)

    def test_le_label_with_plus(self):
        b = promtext.select(self.samples, "fleetstream_processor_end_to_end_seconds_bucket")[0]
        self.assertEqual(b.labels["le"], "+Inf")

    def test_junk_is_an_error(self):
        for line in ['metric{a="x"', 'metric{a=x} 1', "metric", "{a=\"b\"} 1", "m 1 2 3"]:
            with self.assertRaises(ValueError, msg=line):
                promtext.parse_line(line)


class SumTest(unittest.TestCase):
    def setUp(self):
        self.samples = promtext.parse(EXPOSITION)

    def test_total_matches_the_exact_name_only(self):
        self.assertEqual(promtext.total(self.samples, "fleetstream_receiver_positions_acked_total"), 403)

    def test_total_of_an_absent_metric_is_none(self):
        self.assertIsNone(promtext.total(self.samples, "fleetstream_nothing_total"))

    def test_total_with_labels(self):
        name = "fleetstream_processor_end_to_end_seconds_sum"
        self.assertEqual(promtext.total(self.samples, name), 2.0)
        self.assertEqual(promtext.total(self.samples, name, {"from": "device"}), 1.5)
        self.assertIsNone(promtext.total(self.samples, name, {"from": "elsewhere"}))

    def test_by_label(self):
        self.assertEqual(promtext.by_label(self.samples, "fleetstream_receiver_positions_refused_total", "reason"),
                         {"malformed_json": 4, "missing_field": 3, "nan": 0})

    def test_names(self):
        self.assertIn("fleetstream_processor_end_to_end_seconds_bucket", promtext.names(self.samples))

    def test_scrape_of_a_closed_port_is_none(self):
        from ops import kafka_local
        port = kafka_local.free_port_pair()
        self.assertIsNone(promtext.scrape(f"http://127.0.0.1:{port}/metrics", timeout=1))


if __name__ == "__main__":
    unittest.main()
