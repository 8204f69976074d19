import sqlite3
import tempfile
import unittest
from pathlib import Path

from ops import services


class SqliteVersionTest(unittest.TestCase):
    def test_the_library_that_wrote_the_file(self):
        with tempfile.TemporaryDirectory() as d:
            db = Path(d) / "x.db"
            con = sqlite3.connect(db)
            con.execute("CREATE TABLE t (x)")
            con.commit()
            con.close()
            self.assertEqual(services.sqlite_version(db), sqlite3.sqlite_version)
            (Path(d) / "not.db").write_bytes(b"x" * 200)
            self.assertIsNone(services.sqlite_version(Path(d) / "not.db"))
            self.assertIsNone(services.sqlite_version(Path(d) / "missing.db"))


class CounterTest(unittest.TestCase):
    def test_unreachable_is_zero(self):
        self.assertEqual(services.counter(services.free_port(), "x_total"), 0.0)


class LogLinesTest(unittest.TestCase):
    def test_fields_and_time_of_the_last_line_of_each_message(self):
        from ops import bench
        with tempfile.TemporaryDirectory() as d:
            log = Path(d) / "p.log"
            log.write_text(
                "2026-11-23T03:11:57.257951Z  INFO fleetstream_processor::rebalance: partitions assigned partitions=[0]\n"
                "\x1b[2m2026-11-23T03:11:58.137627Z\x1b[0m \x1b[32m INFO\x1b[0m fleetstream_processor::pipeline: partition state "
                "restored partition=0 resume_from=100000 vehicles=100000 secs=0.877898968\n")
            got = bench.log_lines(log, ["partitions assigned", "partition state restored", "missing"])
        self.assertAlmostEqual(got["partitions assigned"]["at"], 1795403517.257951, places=5)
        restored = got["partition state restored"]
        self.assertEqual((restored["vehicles"], restored["secs"]), (100000.0, 0.877898968))
        self.assertAlmostEqual(restored["at"] - got["partitions assigned"]["at"], 0.879676, places=5)
        self.assertNotIn("missing", got)
