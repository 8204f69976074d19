import unittest

from ops import demo_readme, promtext

DEMO = """VEHICLES="${DEMO_VEHICLES:-20}"
DURATION="${DEMO_DURATION:-30s}"
target/debug/obu-sim --vehicles "$VEHICLES" --duration "$DURATION" --interval 500ms \\
cat <<EOT
    live map     http://127.0.0.1:30002/   (API: http://127.0.0.1:30002/api/vehicles, docs/api.md)
EOT
"""

WIRE = """| code | stage | retryable | meaning |
|---|---|---|---|
| `malformed_json` | receiver, processor | no | not valid (UTF-8) JSON |
| `missing_field` | receiver, processor | no | a required field is absent or null |
| `null_island` | processor | no | the (0, 0) fix |
| `future_timestamp` | processor | no | ahead |
"""

COUNTS = """==> receiver
    positions received
      total                    1210
    acked (durably in Kafka)
      total                    1200
    refused, by reason (kept in gpscoords-dlq)
      malformed_json           4
      missing_field            6
==> processor
    valid -> positions, vehicle-latest
      total                    1180
    invalid -> gpscoords-dlq, by reason
      future_timestamp         3
      null_island              7
    duplicates dropped
      total                    10
==> tracker
    positions stored (history)
      total                    1180
    vehicles on the map
      total                    20"""

WHERE = """==> where to look
    live map     http://127.0.0.1:30002/   (API: http://127.0.0.1:30002/api/vehicles, docs/api.md)
    ..."""


def readme(counts=COUNTS, where=WHERE, prose="and 20 simulated vehicles driving around Berlin for 30 s with faults"):
    return f"# x\n\n`make demo` starts the services, {prose}, then prints:\n\n```text\n{counts}\n{where}\n```\n\nMore.\n"


class CheckTest(unittest.TestCase):
    def problems(self, text):
        return demo_readme.check(text, DEMO, WIRE)

    def test_an_honest_block_passes(self):
        self.assertEqual(self.problems(readme()), [])

    def test_received_must_be_acked_plus_refused(self):
        p = self.problems(readme(COUNTS.replace("1210", "1211")))
        self.assertEqual(p, ["receiver: received 1211 != acked 1200 + refused 10"])

    def test_processor_decisions_must_add_up_to_acked(self):
        p = self.problems(readme(COUNTS.replace("total                    10\n==> tracker",
                                                "total                    11\n==> tracker")))
        self.assertEqual(len(p), 1)
        self.assertIn("valid 1180 + invalid 10 + duplicates 11 = 1201, not the receiver's acked 1200", p[0])

    def test_tracker_must_store_every_valid_position_and_see_every_vehicle(self):
        counts = COUNTS.replace("(history)\n      total                    1180", "(history)\n      total                    1179")
        counts = counts.replace("total                    20", "total                    19")
        p = self.problems(readme(counts))
        self.assertIn("tracker: stored 1179 != the processor's valid 1180", p)
        self.assertIn("tracker: 19 vehicles on the map, but scripts/demo simulates 20", p)

    def test_a_reason_of_the_wrong_stage_is_refused(self):
        p = self.problems(readme(COUNTS.replace("missing_field            6", "null_island              6")))
        self.assertEqual(p, ["receiver: `null_island` is not a receiver reason code (docs/wire-format.md)"])

    def test_a_heading_demo_summary_does_not_print_is_named(self):
        p = self.problems(readme(COUNTS.replace("duplicates dropped", "duplicates")))
        self.assertEqual(len(p), 1)
        self.assertIn("`duplicates` (under processor) is not a heading demo_summary prints", p[0])

    def test_alignment_and_order_are_demo_summary_s(self):
        p = self.problems(readme(COUNTS.replace("      malformed_json           4", "      malformed_json   4")))
        self.assertEqual(len(p), 1)
        self.assertIn("not what demo_summary prints", p[0])
        swapped = COUNTS.replace("      malformed_json           4\n      missing_field            6",
                                 "      missing_field            6\n      malformed_json           4")
        self.assertIn("not what demo_summary prints", self.problems(readme(swapped))[0])

    def test_a_missing_section_is_a_difference(self):
        counts = COUNTS[:COUNTS.index("==> tracker")].rstrip("\n")
        self.assertIn("not what demo_summary prints", self.problems(readme(counts))[0])

    def test_where_to_look_lines_come_from_the_script(self):
        where = WHERE.replace("live map     http", "the map      http")
        self.assertIn("is not a line scripts/demo prints", self.problems(readme(where=where))[0])

    def test_prose_and_scale_follow_the_script_s_defaults(self):
        p = self.problems(readme(prose="and 50 simulated vehicles driving around for 60 s"))
        self.assertIn("README says 50 simulated vehicles; scripts/demo's default is 20", p)
        self.assertIn("README says 60 s; scripts/demo's default DEMO_DURATION is 30 s", p)
        small = COUNTS.replace("1210", "110").replace("1200", "100").replace("1180", "80")
        p = self.problems(readme(small))
        self.assertEqual(p, ["receiver: received 110, but 20 vehicles every 0.5 s for 30 s send about 1200"])

    def test_no_block_is_an_error(self):
        self.assertIn("no ```text block", self.problems("# x\n")[0])


class RewriteTest(unittest.TestCase):
    def test_rewrite_puts_demo_summary_s_rendering_in_place_and_keeps_the_rest(self):
        samples = {
            "receiver": promtext.parse('fleetstream_receiver_positions_received_total 1210\n'
                                       'fleetstream_receiver_positions_acked_total 1200\n'
                                       'fleetstream_receiver_positions_refused_total{reason="malformed_json"} 4\n'
                                       'fleetstream_receiver_positions_refused_total{reason="missing_field"} 6\n'
                                       'fleetstream_receiver_positions_refused_total{reason="rate_limited"} 0\n'),
            "processor": promtext.parse('fleetstream_processor_positions_valid_total 1180\n'
                                        'fleetstream_processor_positions_invalid_total{reason="null_island"} 7\n'
                                        'fleetstream_processor_positions_invalid_total{reason="future_timestamp"} 3\n'
                                        'fleetstream_processor_duplicates_total 10\n'),
            "tracker": promtext.parse('fleetstream_tracker_positions_written_total 1180\n'
                                      'fleetstream_tracker_vehicles 20\n'),
        }
        old = readme(COUNTS.replace("1210", "999"))
        new = demo_readme.rewrite(old, samples)
        self.assertEqual(new, readme())
        self.assertEqual(demo_readme.check(new, DEMO, WIRE), [])


if __name__ == "__main__":
    unittest.main()
