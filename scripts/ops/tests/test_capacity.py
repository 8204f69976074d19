import tempfile
import unittest
from pathlib import Path

from ops import capacity


class TopicBytesTest(unittest.TestCase):
    def test_log_segments_of_the_pipeline_topics_only(self):
        with tempfile.TemporaryDirectory() as d:
            data = Path(d)
            for name, size in [("gpscoords-0/00000000000000000000.log", 100), ("gpscoords-5/00000000000000000000.log", 50),
                               ("gpscoords-5/00000000000000000000.index", 10485760), ("vehicle-latest-2/00000000000000000000.log", 7),
                               ("gpscoords-dlq-1/00000000000000000000.log", 3), ("__consumer_offsets-3/00000000000000000000.log", 999),
                               ("positions-x/00000000000000000000.log", 999)]:
                f = data / name
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(b"x" * size)
            got = capacity.topic_bytes(data)
        self.assertEqual(got, {"gpscoords": 150, "positions": 0, "vehicle-latest": 7, "events": 0, "gpscoords-dlq": 3})


class ReportTest(unittest.TestCase):
    def test_report_names_every_figure(self):
        m = {"vehicles": 10, "window_s": 60.0, "commands": ["x --y"],
             "services": {"receiver": {"cpu_s": 1.0, "positions": 600, "cpu_share": 0.02, "per_cpu_s": 600.0, "idle_share": 0.01,
                                       "per_cpu_s_above_idle": 1500.0},
                          "obu-sim": {"cpu_s": 0.5, "cpu_share": 0.01}},
             "disk": {"gpscoords": {"records": 600, "bytes": 60000, "per_record": 100.0}},
             "sqlite": {"rows": {"positions": 600}, "bytes": 120000, "per_position_row": 200.0},
             "backlog": {"sqlite": {"positions": 600, "seconds": 0.5, "per_s": 1200.0, "tracker_cpu_s": 0.1, "db_cpu_s": 0.0}}}
        text = capacity.report(m)
        self.assertIn("| receiver | 0.02 (0.01) | 600 | 1.0 | 600 | 1,500 |", text)
        self.assertIn("| obu-sim | 0.01 | 0 | 0.5 | — | — |", text)
        self.assertIn("| gpscoords | 600 | 60,000 | 100 |", text)
        self.assertIn("200 bytes per position row", text)
        self.assertIn("tracker backlog (sqlite): 600 positions in 0.5 s = 1,200/s", text)
        self.assertIn("    x --y", text)


if __name__ == "__main__":
    unittest.main()
