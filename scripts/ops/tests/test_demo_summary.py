import unittest

from ops import demo_summary, promtext

RECEIVER = """fleetstream_receiver_positions_received_total 411
fleetstream_receiver_positions_acked_total 403
fleetstream_receiver_positions_refused_total{reason="malformed_json"} 4
fleetstream_receiver_positions_refused_total{reason="missing_field"} 3
fleetstream_receiver_positions_refused_total{reason="too_many_connections"} 0
"""


class SummaryTest(unittest.TestCase):
    def test_rows(self):
        samples = promtext.parse(RECEIVER)
        self.assertEqual(demo_summary.rows(samples, "fleetstream_receiver_positions_acked_total", None), [("total", 403)])
        self.assertEqual(demo_summary.rows(samples, "fleetstream_receiver_positions_refused_total", "reason"),
                         [("malformed_json", 4), ("missing_field", 3)])
        self.assertEqual(demo_summary.rows(samples, "fleetstream_nothing_total", None), [("total", 0)])

    def test_summary_of_an_unreachable_service_shows_zeros(self):
        text = demo_summary.summary({"receiver": promtext.parse(RECEIVER), "processor": [], "tracker": []})
        lines = text.splitlines()
        self.assertEqual(lines[0], "==> receiver")
        self.assertIn("      total                    411", lines)
        self.assertIn("      malformed_json           4", lines)
        self.assertIn("==> tracker", lines)
        self.assertEqual(lines[-1], "      total                    0")


if __name__ == "__main__":
    unittest.main()
