"""What make bench (ops.bench) and the capacity figures (ops.capacity) both do with the services:
measure a process (CPU time, ports, readiness), start a throw-away PostgreSQL, and the tracker's
backlog run (a tracker with an empty database and a new consumer group reads a `positions`
topic whole; the rate is taken from fleetstream_tracker_positions_written_total).

The functions that start processes take a `start(name, cmd)` callable (each script logs and
records its commands its own way) and a `stop(proc)` one.
"""
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from ops import promtext


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"service on {port} not ready")


def wait_until(what, predicate, timeout, step=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise RuntimeError(f"timed out waiting for {what}")


def counter(port, name) -> float:
    """The sum of a metric's samples at 127.0.0.1:PORT; 0 if unreachable."""
    return promtext.total(promtext.scrape(f"http://127.0.0.1:{port}/metrics") or [], name) or 0.0


def sqlite_version(path: Path) -> Optional[str]:
    """The SQLite library that last wrote a database file (its header's SQLITE_VERSION_NUMBER
    at offset 96), e.g. "3.50.2": the tracker's bundled SQLite, not Python's."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return None
    n = int.from_bytes(header[96:100], "big")
    return f"{n // 1_000_000}.{n // 1000 % 1000}.{n % 1000}"


class Postgres:
    """A throw-away PostgreSQL server in DIR (run as the postgres user when we are root); the
    directory's parents must be readable by that user."""

    def __init__(self, directory: Path, port: int):
        self.dir, self.port = directory, port
        self.bin = self.find_bin()
        self.proc: Optional[subprocess.Popen] = None

    @staticmethod
    def find_bin() -> Path:
        if os.environ.get("PG_BIN"):
            return Path(os.environ["PG_BIN"])
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
        if not found:
            raise RuntimeError("PostgreSQL is not installed (scripts/test-deps installs it), or set PG_BIN")
        return found[-1].parent

    def command(self, program, *args):
        cmd = [str(self.bin / program), *args]
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *cmd] if os.geteuid() == 0 else cmd

    def start(self, start: Callable, database="tracker"):
        self.dir.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(self.command("initdb", "-D", str(self.dir / "data"), "-U", "fleetstream", "--auth=trust"),
                       check=True, capture_output=True)
        self.proc = start("postgres", self.command("postgres", "-D", str(self.dir / "data"), "-p", str(self.port),
                                                   "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1"))
        wait_until("PostgreSQL", lambda: subprocess.run(self.command("pg_isready", "-h", "127.0.0.1", "-p", str(self.port)),
                                                        capture_output=True).returncode == 0, 60)
        self.createdb(database)

    def createdb(self, database):
        subprocess.run(self.command("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "fleetstream", database),
                       check=True, capture_output=True)

    def url(self, database="tracker"):
        return f"postgres://fleetstream@127.0.0.1:{self.port}/{database}"

    def cpu(self) -> float:
        """CPU seconds of the server and all its backends (the children of the postmaster)."""
        total = cpu_seconds(self.proc.pid)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                total += cpu_seconds(stat.parent.name)
        return total

    def sql(self, query, database="tracker") -> str:
        r = subprocess.run(self.command("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "fleetstream", "-d", database,
                                        "-At", "-c", query), check=True, capture_output=True, text=True)
        return r.stdout.strip()


def tracker_command(binary, port, brokers, database_url, group, topics=None, extra=()):
    """The tracker's command line; `topics`: {"positions", "events", "vehicle-latest",
    "geofences"} names when not the defaults."""
    cmd = [binary, "--listen", f"127.0.0.1:{port}", "--kafka-brokers", brokers, "--database-url", database_url,
           "--group-id", group, "--api-auth", "none", "--log-level", "warn", *extra]
    if topics:
        cmd += ["--positions-topic", topics["positions"], "--events-topic", topics["events"],
                "--latest-topic", topics["vehicle-latest"], "--geofences-topic", topics["geofences"]]
    return cmd


def backlog_run(start, stop, cmd, port, name, total_positions, extra_cpu=lambda: 0.0, timeout=600):
    """The tracker `cmd` (listening on PORT, an empty database, a new group) reads a `positions`
    topic of TOTAL_POSITIONS whole. Returns positions/s over the whole run from ready (`per_s`,
    `seconds`, as ops.capacity has always reported it) and from its first write to its last
    (`steady_per_s`, `steady_seconds`: without the group join and the first fetch), the
    tracker's CPU-s and `extra_cpu`'s (the database server's) over the run, and the mean rows
    per database write (fleetstream_tracker_batch_size)."""
    t = start(name, cmd)
    wait_ready(port, 120)
    began, cpu0, extra0 = time.time(), cpu_seconds(t.pid), extra_cpu()
    first, first_n, written = None, 0.0, 0.0
    deadline = began + timeout
    while written < total_positions:
        if time.time() > deadline or t.poll() is not None:
            stop(t)
            raise RuntimeError(f"{name} stored {written:.0f} of {total_positions} positions (see its log)")
        written = counter(port, "fleetstream_tracker_positions_written_total")
        if written > 0 and first is None:
            first, first_n = time.time(), written
        time.sleep(0.05)
    done = time.time()
    cpu, db_cpu = cpu_seconds(t.pid) - cpu0, extra_cpu() - extra0
    batches = counter(port, "fleetstream_tracker_batch_size_count")
    rows = counter(port, "fleetstream_tracker_batch_size_sum")
    stop(t)
    elapsed = done - began
    steady = max(done - (first or began), 1e-3)
    return {"positions": total_positions, "seconds": elapsed, "per_s": total_positions / elapsed,
            "steady_seconds": steady, "steady_per_s": (total_positions - first_n) / steady,
            "tracker_cpu_s": cpu, "db_cpu_s": db_cpu, "batches": batches, "mean_batch": rows / batches if batches else None}
