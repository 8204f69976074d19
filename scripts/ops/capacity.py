"""The capacity figures of docs/operations.md ("Capacity"): measured, not estimated.

    cargo build --release --locked -p fleetstream-receiver -p fleetstream-processor \\
        -p fleetstream-obu-sim -p fleetstream-tracker
    PYTHONPATH=scripts python3 -m ops.capacity [--vehicles 2000] [--duration 90] [--postgres]

1. A fleet run: one Apache Kafka node (scripts/kafka-local, its own directory and port, fresh
   data), the receiver, the processor (Kafka transactions, the demo's geofences) and the tracker
   (SQLite) from --bin, and a simulated fleet of --vehicles reporting every second for
   --duration seconds, one WebSocket connection per vehicle, 1% faults and 1% resends. Between
   the end of a warm-up and the end of the fleet, each process's CPU time (/proc/PID/stat) and
   its counter of positions handled give CPU-seconds per position: the vehicles at 1 Hz one core
   carries. The broker's JVM is measured the same way. Before the fleet starts, --idle seconds
   of the same processes with no traffic give the part of that CPU that does not grow with the
   fleet (polling, the broker's own work), reported beside.
2. Disk: once the pipeline is idle, the bytes of each topic's log segments (*.log under the
   broker's data directory) divided by the records written to it (the services' counters),
   and the tracker's SQLite file (after a clean stop) divided by its rows.
3. The tracker's sustained write rate: a second tracker with an empty database and its own
   consumer group reads the whole `positions` topic as a backlog; positions stored per second
   (wall) and per CPU-second. With --postgres, the same into a PostgreSQL started for the run
   (initdb; PG_BIN or /usr/lib/postgresql/*/bin), whose CPU counts too, and its table sizes.

Prints a Markdown report on stdout (and --json FILE). Needs 2 to 4 minutes and a few hundred MB
in --work (default: a new directory in $TMPDIR, deleted unless --keep).
"""
import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from ops import kafka_local, promtext
from ops.services import Postgres, backlog_run, cpu_seconds, free_port, tracker_command, wait_ready, wait_until

ROOT = Path(__file__).resolve().parents[2]
TOPICS = ["gpscoords", "positions", "vehicle-latest", "events", "gpscoords-dlq"]


def log(msg):
    print(f"capacity: {msg}", file=sys.stderr, flush=True)


class Procs:
    """The processes of the run, each logging to WORK/NAME.log; all stopped at the end."""

    def __init__(self, work: Path):
        self.work = work
        self.all: List[subprocess.Popen] = []
        self.commands: List[str] = []

    def start(self, name, cmd, env=None) -> subprocess.Popen:
        self.commands.append(" ".join(str(c) for c in cmd).replace(str(ROOT) + "/", ""))
        out = open(self.work / f"{name}.log", "ab")
        p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=out, env={**os.environ, **(env or {})})
        self.all.append(p)
        return p

    @staticmethod
    def stop(p, timeout=30):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in reversed(self.all):
            self.stop(p)


def scrape(port) -> list:
    return promtext.scrape(f"http://127.0.0.1:{port}/metrics") or []


def counter(samples, name) -> float:
    return promtext.total(samples, name) or 0.0


def topic_bytes(data_dir: Path) -> Dict[str, int]:
    """Bytes of the log segments (*.log) of each pipeline topic, all partitions."""
    out = {t: 0 for t in TOPICS}
    for d in data_dir.iterdir():
        topic, _, partition = d.name.rpartition("-")
        if topic in out and partition.isdigit():
            out[topic] += sum(f.stat().st_size for f in d.glob("*.log"))
    return out


def sqlite_rows(path: Path) -> Dict[str, int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("positions", "events", "trips")}
    finally:
        con.close()


def tracker(procs, name, binary, port, brokers, database_url, group):
    return procs.start(name, tracker_command(binary, port, brokers, database_url, group))


def backlog(procs, args, brokers, name, database_url, total_positions, extra_cpu=lambda: 0.0):
    port = free_port()
    cmd = tracker_command(args.bin / "tracker", port, brokers, database_url, f"capacity-{name}")
    return backlog_run(procs.start, procs.stop, cmd, port, name, total_positions, extra_cpu)


def measure(args, work: Path, procs: Procs) -> dict:
    rel = args.bin
    kafka = kafka_local.KafkaLocal(ROOT, work / "kafka", kafka_local.free_port_pair(), partitions=6, log_level="warn")
    procs.commands.append(" ".join(kafka.command("--fresh", "start")).replace(str(ROOT) + "/", "").replace(str(work), "$WORK"))
    brokers = kafka.start(fresh=True)
    broker_pid = kafka.pids()[0]
    try:
        ports = {s: free_port() for s in ("receiver", "processor", "tracker")}
        receiver = procs.start("receiver", [rel / "receiver", "--listen", f"127.0.0.1:{ports['receiver']}", "--kafka-brokers", brokers,
                                            "--auth", "none", "--max-connections-per-ip", "0", "--log-level", "warn"])
        processor = procs.start("processor", [rel / "processor", "--listen", f"127.0.0.1:{ports['processor']}", "--kafka-brokers", brokers,
                                              "--geofences", ROOT / "examples/geofences.geojson", "--log-level", "warn"])
        db = work / "tracker.db"
        tracker_p = tracker(procs, "tracker", rel / "tracker", ports["tracker"], brokers, f"sqlite://{db}", "fleetstream-tracker")
        for port in ports.values():
            wait_ready(port, 120)
        # What the pipeline costs with no fleet at all (polls, the broker's own work): the part
        # of the fleet window's CPU that does not grow with the positions.
        idle_pids = {"receiver": receiver.pid, "processor": processor.pid, "tracker": tracker_p.pid, "broker": broker_pid}
        time.sleep(10)
        log(f"idle: {args.idle} s without a fleet")
        i0 = {n: cpu_seconds(p) for n, p in idle_pids.items()}
        time.sleep(args.idle)
        idle_share = {n: (cpu_seconds(p) - i0[n]) / args.idle for n, p in idle_pids.items()}
        log(f"fleet: {args.vehicles} vehicles at 1 Hz for {args.duration} s (warm-up {args.warmup} s)")
        sim = procs.start("obu-sim", [rel / "obu-sim", "--url", f"ws://127.0.0.1:{ports['receiver']}/ws", "--vehicles", args.vehicles,
                                      "--interval", "1s", "--duration", f"{args.duration}s", "--invalid-ratio", "0.01",
                                      "--duplicate-ratio", "0.01", "--quiet", "--json", "--log-level", "warn"])
        time.sleep(args.warmup)
        pids = {"receiver": receiver.pid, "processor": processor.pid, "tracker": tracker_p.pid, "broker": broker_pid, "obu-sim": sim.pid}
        handled = {
            "receiver": ("receiver", "fleetstream_receiver_positions_received_total"),
            "processor": ("processor", "fleetstream_processor_records_consumed_total"),
            "tracker": ("tracker", "fleetstream_tracker_positions_consumed_total"),
            "broker": ("receiver", "fleetstream_receiver_positions_received_total"),
        }
        t0, cpu0 = time.time(), {n: cpu_seconds(p) for n, p in pids.items()}
        count0 = {n: counter(scrape(ports[s]), m) for n, (s, m) in handled.items()}
        time.sleep(max(1.0, args.duration - args.warmup - 2))
        t1, cpu1 = time.time(), {n: cpu_seconds(p) for n, p in pids.items()}
        count1 = {n: counter(scrape(ports[s]), m) for n, (s, m) in handled.items()}
        sim.wait(args.duration + 120)
        window = t1 - t0
        per_service = {}
        for n in handled:
            cpu, positions = cpu1[n] - cpu0[n], count1[n] - count0[n]
            above_idle = cpu - idle_share[n] * window
            per_service[n] = {"cpu_s": cpu, "positions": positions, "cpu_share": cpu / window,
                              "per_cpu_s": positions / cpu if cpu else None, "idle_share": idle_share[n],
                              "per_cpu_s_above_idle": positions / above_idle if above_idle > 0 else None}
        per_service["obu-sim"] = {"cpu_s": cpu1["obu-sim"] - cpu0["obu-sim"], "cpu_share": (cpu1["obu-sim"] - cpu0["obu-sim"]) / window}

        # Idle: everything acked is processed, everything valid is stored.
        acked = lambda: counter(scrape(ports["receiver"]), "fleetstream_receiver_positions_acked_total")
        consumed = lambda: counter(scrape(ports["processor"]), "fleetstream_processor_records_consumed_total")
        wait_until("the processor to catch up", lambda: consumed() >= acked(), 300)
        valid = counter(scrape(ports["processor"]), "fleetstream_processor_positions_valid_total")
        wait_until("the tracker to catch up",
                   lambda: counter(scrape(ports["tracker"]), "fleetstream_tracker_positions_consumed_total") >= valid, 300)
        time.sleep(3)
        r, p, t = scrape(ports["receiver"]), scrape(ports["processor"]), scrape(ports["tracker"])
        records = {
            "gpscoords": counter(r, "fleetstream_receiver_positions_acked_total"),
            "positions": counter(p, "fleetstream_processor_positions_valid_total"),
            "vehicle-latest": counter(p, "fleetstream_processor_latest_writes_total"),
            "events": counter(p, "fleetstream_processor_events_total"),
            "gpscoords-dlq": counter(r, "fleetstream_receiver_dlq_records_total") + counter(p, "fleetstream_processor_dlq_records_total"),
        }
        procs.stop(tracker_p)
        procs.stop(sim)
        procs.stop(receiver)
        procs.stop(processor)
        sizes = topic_bytes(work / "kafka" / "node-1" / "data")
        disk = {topic: {"records": records[topic], "bytes": sizes[topic],
                        "per_record": sizes[topic] / records[topic] if records[topic] else None} for topic in TOPICS}
        rows = sqlite_rows(db)
        sqlite_bytes = db.stat().st_size + sum(f.stat().st_size for f in work.glob("tracker.db-*"))
        sqlite = {"rows": rows, "bytes": sqlite_bytes, "per_position_row": sqlite_bytes / rows["positions"] if rows["positions"] else None}

        # The tracker's sustained write rate: the whole `positions` topic as a backlog. Started
        # on a broker with the fleet stopped, so only the tracker (and its database) work.
        kafka.stop()
        brokers = kafka.start()
        log(f"tracker backlog run (SQLite): {records['positions']:.0f} positions")
        backlog = {"sqlite": backlog(procs, args, brokers, "tracker-backlog", f"sqlite://{work / 'backlog.db'}", records["positions"])}
        if args.postgres:
            pg = Postgres(work / "pg", free_port())
            pg.start(procs.start)
            log(f"tracker backlog run (PostgreSQL): {records['positions']:.0f} positions")
            backlog["postgres"] = backlog(procs, args, brokers, "tracker-pg", pg.url(), records["positions"], pg.cpu)
            backlog["postgres"]["sizes"] = {
                table: int(pg.sql(f"SELECT pg_total_relation_size('{table}')")) for table in ("positions", "events", "trips")}
            backlog["postgres"]["rows"] = {table: int(pg.sql(f"SELECT count(*) FROM {table}")) for table in ("positions", "events", "trips")}
        return {"vehicles": args.vehicles, "duration_s": args.duration, "window_s": window, "services": per_service,
                "disk": disk, "sqlite": sqlite, "backlog": backlog, "commands": procs.commands}
    finally:
        procs.stop_all()
        kafka.stop()


def report(m: dict) -> str:
    out = [f"fleet: {m['vehicles']} vehicles at 1 Hz, CPU measured over {m['window_s']:.0f} s", "",
           "| process | CPU share of one core (idle) | positions | CPU-s | positions per CPU-second (= vehicles at 1 Hz per core) | the same, idle CPU left out |",
           "|---|---|---|---|---|---|"]
    for name, s in m["services"].items():
        per = f"{s['per_cpu_s']:,.0f}" if s.get("per_cpu_s") else "—"
        marginal = f"{s['per_cpu_s_above_idle']:,.0f}" if s.get("per_cpu_s_above_idle") else "—"
        idle = f" ({s['idle_share']:.2f})" if "idle_share" in s else ""
        out.append(f"| {name} | {s['cpu_share']:.2f}{idle} | {s.get('positions', 0):,.0f} | {s['cpu_s']:.1f} | {per} | {marginal} |")
    out += ["", "| topic | records | log bytes | bytes per record |", "|---|---|---|---|"]
    for topic, d in m["disk"].items():
        per = f"{d['per_record']:.0f}" if d["per_record"] else "—"
        out.append(f"| {topic} | {d['records']:,.0f} | {d['bytes']:,} | {per} |")
    s = m["sqlite"]
    out += ["", f"tracker SQLite: {s['bytes']:,} bytes for {s['rows']} rows: {s['per_position_row']:.0f} bytes per position row (events included)"]
    for backend, b in m["backlog"].items():
        line = (f"tracker backlog ({backend}): {b['positions']:,.0f} positions in {b['seconds']:.1f} s = {b['per_s']:,.0f}/s; "
                f"tracker {b['tracker_cpu_s']:.1f} CPU-s ({b['positions'] / b['tracker_cpu_s']:,.0f} positions per CPU-s)")
        if b.get("db_cpu_s"):
            line += f", database {b['db_cpu_s']:.1f} CPU-s"
        if b.get("sizes"):
            line += f"; sizes {b['sizes']} for rows {b['rows']}"
        out.append(line)
    out += ["", "commands:", *[f"    {c}" for c in m["commands"]]]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="capacity", description=__doc__.splitlines()[0])
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release", help="where the release binaries are")
    ap.add_argument("--vehicles", type=int, default=2000)
    ap.add_argument("--duration", type=int, default=90, help="seconds the fleet drives")
    ap.add_argument("--warmup", type=int, default=20, help="seconds before the CPU window starts")
    ap.add_argument("--idle", type=int, default=30, help="seconds of CPU measured before the fleet starts")
    ap.add_argument("--postgres", action="store_true", help="also the tracker's backlog into PostgreSQL")
    ap.add_argument("--work", type=Path, help="work directory (default: a new one in $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    for b in ("receiver", "processor", "tracker", "obu-sim"):
        if not (args.bin / b).exists():
            print(f"capacity: {args.bin / b} is missing: cargo build --release --locked -p fleetstream-{b}", file=sys.stderr)
            return 1
    work = args.work or Path(tempfile.mkdtemp(prefix="fleetstream-capacity-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # PostgreSQL's server, run as its own user, keeps its data below
    procs = Procs(work)
    try:
        m = measure(args, work, procs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(m, indent=2))
    print(report(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
