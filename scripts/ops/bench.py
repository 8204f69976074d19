"""make bench: the benchmark suite (scripts/bench runs it). Starts its own Apache Kafka through
scripts/kafka-local (a dedicated directory and port, fresh data) and the real services (release
builds), measures five stages several times, and hands the medians to `bench-report`, which
writes docs/benchmarks.md and its plots.

Environment: BENCH_RUNS (3), BENCH_QUICK=1 (smaller counts, for a smoke run), BENCH_NOTES (a
JSON file with a list of extra notes for the report), BENCH_EXACTLY_ONCE (the processor's
--exactly-once mode, transactions), BENCH_MODES=1 (instead of the suite: both exactly-once modes
compared, a Markdown table on stdout; docs/processing.md quotes it). BENCH_TRACING_RUNS (max(BENCH_RUNS, 5))
rounds of the tracing-cost stage. BENCH_ONLY=tracing or BENCH_ONLY=spans (for development): after a
short warm-up, only the tracing-cost stage or the per-position span breakdown; its results replace
that section of the existing docs/benchmarks.json, every other figure is kept, and
docs/benchmarks.md is regenerated from it. The services inherit
the environment, but every setting that matters is passed as a flag.
"""
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ops import kafka_local, promtext
from ops.services import Postgres, backlog_run, cpu_seconds, free_port, sqlite_version, tracker_command, wait_ready

ROOT = Path(__file__).resolve().parents[2]
REL = ROOT / "target" / "release"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
QUICK = os.environ.get("BENCH_QUICK") == "1"
PARTITIONS = 6
N_BASELINE = 50_000 if QUICK else 200_000
N_INGEST = 50_000 if QUICK else 200_000
N_PROCESSOR = 100_000 if QUICK else 400_000
RATES = [1_000, 10_000] if QUICK else [1_000, 10_000, 20_000]  # the rates; floors are measured at each
E2E_SECONDS = 5 if QUICK else 10
CONNECTIONS = 2_000 if QUICK else 100_000  # idle connections held by one receiver
CONN_ACTIVE = 500 if QUICK else 10_000  # of them, vehicles reporting once a second (ack p99 alone and beside the rest)
CONN_SECONDS = 10 if QUICK else 30
N_TRACKER = 50_000 if QUICK else 200_000
TRACKER_BATCH = 1_000  # the tracker's --batch-size (TRACKER_BATCH_SIZE), its default
N_TAKEOVER = 10_000 if QUICK else 100_000
N_TAKEOVER_NEW = 1_000
TRACING_RUNS = int(os.environ.get("BENCH_TRACING_RUNS", str(max(RUNS, 5))))
# The tracing-cost stage's ways of running the receiver: (name, --trace-sample-ratio or None for off).
TRACING = [("off", None), ("ratio 0", "0"), ("ratio 0.01", "0.01")]
SUSTAINED_P99_MS = 500
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
WORK = Path(tempfile.gettempdir())  # main() makes the run's own directory
COMMANDS = []
procs = []


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(cmd, record=True, **kw):
    if record:
        COMMANDS.append(" ".join(str(c) for c in cmd).replace(str(ROOT) + "/", ""))
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw).stdout


def start(name, cmd, env=None):
    COMMANDS.append(" ".join(str(c) for c in cmd).replace(str(ROOT) + "/", "") + " &")
    logf = open(WORK / f"{name}.log", "a")
    p = subprocess.Popen([str(c) for c in cmd], stdout=logf, stderr=logf, env={**os.environ, **(env or {})})
    procs.append(p)
    return p


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def children_cpu_seconds():
    """CPU-seconds of this script's finished children (a simulator run through `run`)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def metric(port, name, labels=None):
    """The sum of a metric's samples (those with `labels`) at 127.0.0.1:PORT; 0 if unreachable."""
    samples = promtext.scrape(f"http://127.0.0.1:{port}/metrics")
    return (promtext.total(samples, name, labels) or 0.0) if samples is not None else 0.0


class Broker:
    """One Apache Kafka node for the whole suite, through scripts/kafka-local: its own directory
    and port, fresh data; every stage gets topics of its own."""

    def __init__(self, directory):
        self.version = kafka_local.kafka_version(kafka_local.binary(ROOT))
        self.local = kafka_local.KafkaLocal(ROOT, directory, kafka_local.free_port_pair(), partitions=PARTITIONS,
                                            log_level="warn")
        self.brokers = None
        self.pid = None
        self.n = 0

    def start(self):
        cmd = " ".join(self.local.command("--fresh", "start")).replace(str(ROOT) + "/", "")
        COMMANDS.append(cmd.replace(str(WORK), "$WORK"))
        self.brokers = self.local.start(fresh=True)
        pids = self.local.pids()
        if not pids:
            raise RuntimeError("kafka-local start recorded no pid")
        self.pid = pids[0]  # the JVM, for its CPU time
        log(f"broker: Apache Kafka {self.version} on {self.brokers} (pid {self.pid})")

    def topics(self):
        self.n += 1
        names = {k: f"{k}-{self.n}" for k in ("gpscoords", "positions", "vehicle-latest", "gpscoords-dlq", "events", "geofences")}
        self.local.topics(raw=names["gpscoords"], positions=names["positions"], latest=names["vehicle-latest"],
                          dlq=names["gpscoords-dlq"])
        return names

    def stop(self):
        self.local.stop()


def receiver(broker, t, port, extra=()):
    p = start("receiver", [REL / "receiver", "--listen", f"127.0.0.1:{port}", "--kafka-brokers", broker.brokers,
                           "--topic", t["gpscoords"], "--dlq-topic", t["gpscoords-dlq"], "--auth", "none",
                           "--rate-limit", "0", "--max-connections", "20000", "--max-in-flight-per-connection", "5000",
                           # Every simulated device connects from 127.0.0.1 (10k in the connections stage).
                           "--max-connections-per-ip", "0",
                           "--log-level", "warn", *extra])
    wait_ready(port)
    return p


EXACTLY_ONCE = os.environ.get("BENCH_EXACTLY_ONCE", "transactions")


def processor(broker, t, port, group=None, log_level="warn", name="processor", ready=True, extra=()):
    p = start(name, [REL / "processor", "--listen", f"127.0.0.1:{port}", "--kafka-brokers", broker.brokers,
                            "--group-id", group or f"bench-{port}", "--input-topic", t["gpscoords"],
                            "--positions-topic", t["positions"], "--latest-topic", t["vehicle-latest"],
                            "--dlq-topic", t["gpscoords-dlq"], "--events-topic", t["events"],
                            "--geofences-topic", t["geofences"], "--exactly-once", EXACTLY_ONCE, "--log-level", log_level, *extra])
    if ready:
        wait_ready(port)
    return p


def sim(args):
    out = run([REL / "obu-sim", "--quiet", "--json", "--log-level", "warn", *args])
    return json.loads(out)


def stage_geofences():
    """Point-in-fence cost at 10, 1,000 and 10,000 fences (no broker involved)."""
    return json.loads(run([REL / "geofence-bench", "--json", "--lookups", "300000", "--rounds", "5"]))


def stage_baseline(broker):
    t = broker.topics()
    r = json.loads(run([REL / "produce-bench", "--brokers", broker.brokers, "--topic", t["gpscoords"],
                        "--count", N_BASELINE, "--vehicles", 1000]))
    log(f"baseline: {r['per_s']:.0f}/s")
    return r["per_s"]


def stage_ingest(broker, t=None, extra=()):
    """Receiver acked ingest: the simulator's load mode, N_INGEST positions as fast as they are
    acked, into a new receiver (its `extra` flags) and topic (`t`, or new ones)."""
    t = t or broker.topics()
    port = free_port()
    rec = receiver(broker, t, port, extra)
    cpu0 = (cpu_seconds(rec.pid), cpu_seconds(broker.pid), children_cpu_seconds())
    s = sim(["--url", f"ws://127.0.0.1:{port}/ws", "--mode", "load", "--rate", "0", "--count", N_INGEST,
             "--vehicles", "1000", "--connections", "8", "--batch", "50", "--max-in-flight", "5000"])
    # The simulator shares the two cores: its CPU is what the receiver could not have.
    cpu = (cpu_seconds(rec.pid) - cpu0[0], cpu_seconds(broker.pid) - cpu0[1], children_cpu_seconds() - cpu0[2])
    stop(rec)
    per_s = s["acked"] / s["elapsed_s"]
    log(f"ingest: {per_s:.0f}/s p99 {s['ack_latency_ms']['p99']} ms; cpu receiver {cpu[0]:.1f}s broker {cpu[1]:.1f}s simulator {cpu[2]:.1f}s over {s['elapsed_s']:.1f}s")
    return per_s, s["ack_latency_ms"], cpu, s["elapsed_s"]


class Collector:
    """A real OpenTelemetry Collector (scripts/go-tools otelcol, as crates/testkit's tracing
    test runs it): OTLP/HTTP in on a free port of 127.0.0.1, every request out as an OTLP/JSON
    line in DIR/spans.jsonl."""

    def __init__(self, directory):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.spans = self.dir / "spans.jsonl"
        (self.dir / "config.yaml").write_text(
            f"receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:{self.port}\n"
            f"exporters:\n  file:\n    path: '{self.spans}'\n    format: json\n    flush_interval: 50ms\n"
            "service:\n  telemetry:\n    logs:\n      level: warn\n    metrics:\n      level: none\n"
            "  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n")
        COMMANDS.append("scripts/go-tools otelcol")
        bin_dir = subprocess.run([ROOT / "scripts" / "go-tools", "otelcol"], check=True, capture_output=True, text=True).stdout.strip()
        self.proc = start("otelcol", [Path(bin_dir) / "otelcol", f"--config={self.dir / 'config.yaml'}"])
        COMMANDS[-1] = COMMANDS[-1].replace(bin_dir, "$(scripts/go-tools otelcol)")
        deadline = time.time() + 30
        while not port_open(self.port):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the OpenTelemetry Collector did not listen on {self.port} (log: {WORK / 'otelcol.log'})")
            time.sleep(0.1)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def settled(self):
        """Waits until the spans file stops growing (the exporter flushes every 50 ms)."""
        size, still = -1, 0
        for _ in range(100):
            now = self.spans.stat().st_size if self.spans.exists() else 0
            still = still + 1 if now == size else 0
            if still >= 5:
                return
            size = now
            time.sleep(0.2)


def port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def rotated(items, i):
    """`items` starting at its i-th (mod its length): round i's order."""
    k = i % len(items)
    return items[k:] + items[:k]


def stage_tracing(broker, rounds):
    """What tracing costs the receiver (issue 16): stage_ingest with tracing off, on at ratio 0
    (every position unsampled) and on at 0.01, `rounds` times each, the order rotating from round
    to round; then what each run left in `gpscoords` (trace-count) and at the collector."""
    n0 = len(COMMANDS)
    collector = Collector(WORK / "otelcol")
    runs = {name: [] for name, _ in TRACING}
    seen_spans = 0
    commands = None
    for i in range(rounds):
        for name, ratio in rotated(TRACING, i):
            log(f"tracing: round {i + 1}/{rounds}, {name}")
            t = broker.topics()
            extra = [] if ratio is None else ["--otlp-endpoint", collector.endpoint, "--trace-sample-ratio", ratio]
            c0 = cpu_seconds(collector.proc.pid)
            per_s, lat, cpu, elapsed = stage_ingest(broker, t, extra)
            collector.settled()  # the receiver sent what it held when it stopped
            counted = json.loads(run([REL / "trace-count", "--brokers", broker.brokers, "--topic", t["gpscoords"],
                                      "--spans", collector.spans]))
            r = {"per_s": per_s, "acked": round(per_s * elapsed), "elapsed_s": elapsed, "cpu_s": cpu[0], "broker_cpu_s": cpu[1],
                 "simulator_cpu_s": cpu[2], "p50": lat["p50"], "p99": lat["p99"], "records": counted["records"],
                 "traceparent": counted["traceparent"], "spans": counted["spans"] - seen_spans,
                 "headers_with_span": counted["headers_with_span"], "collector_cpu_s": cpu_seconds(collector.proc.pid) - c0}
            seen_spans = counted["spans"]
            log(f"tracing {name}: {per_s:.0f}/s, receiver {1000 * cpu[0] / max(r['acked'], 1):.4f} CPU-s per 1k; "
                f"{r['traceparent']} of {r['records']} with traceparent, {r['spans']} spans")
            runs[name].append(r)
        if i == 0:
            commands = commands_since(n0)
    stop(collector.proc)
    return {"count": N_INGEST, "rounds": rounds, "date": time.strftime("%Y-%m-%d"),
            "variants": [{"name": name, "ratio": None if ratio is None else float(ratio), "runs": runs[name]}
                         for name, ratio in TRACING],
            "commands": commands}


def stage_processor(broker):
    t = broker.topics()
    fill = json.loads(run([REL / "produce-bench", "--brokers", broker.brokers, "--topic", t["gpscoords"],
                           "--count", N_PROCESSOR, "--vehicles", 1000, "--invalid-ratio", "0.05", "--duplicate-ratio", "0.02"]))
    port = free_port()
    proc = processor(broker, t, port)
    cpu0 = (cpu_seconds(proc.pid), cpu_seconds(broker.pid))
    # Steady state: from the first commit (the first batch also rebuilt the partitions' state)
    # to the last one (that batch's outputs acknowledged).
    first, first_n, last_commits, done = None, 0.0, 0.0, None
    deadline = time.time() + 300
    while time.time() < deadline:
        n = metric(port, "fleetstream_processor_records_consumed_total")
        commits = metric(port, "fleetstream_processor_commits_total")
        now = time.time()
        if commits > 0 and first is None:
            first, first_n = now, n
        if commits != last_commits:
            last_commits, done = commits, now
        if n >= N_PROCESSOR and done and now - done > 1.0:
            break
        time.sleep(0.05)
    done = done or time.time()
    cpu = (cpu_seconds(proc.pid) - cpu0[0], cpu_seconds(broker.pid) - cpu0[1])
    valid = metric(port, "fleetstream_processor_positions_valid_total")
    stop(proc)
    per_s = (N_PROCESSOR - first_n) / max(done - (first or done), 1e-3)
    log(f"processor: {per_s:.0f}/s ({valid:.0f} valid, {fill['invalid']} invalid, {fill['duplicates']} dup); cpu processor {cpu[0]:.1f}s broker {cpu[1]:.1f}s")
    return per_s, cpu, done - (first or done)


def stage_e2e(broker, rate):
    t = broker.topics()
    rport, pport = free_port(), free_port()
    rec = receiver(broker, t, rport)
    proc = processor(broker, t, pport)
    deadline = time.time() + 30
    while metric(pport, "fleetstream_processor_assigned_partitions") < PARTITIONS and time.time() < deadline:
        time.sleep(0.1)
    # Warm-up, not measured: the receiver's producer gets its metadata and producer id, the
    # processor its first transaction, before the probe starts reading at the end of the topic.
    sim(["--url", f"ws://127.0.0.1:{rport}/ws", "--mode", "load", "--rate", "1000", "--count", "500",
         "--vehicles", "100", "--connections", "8", "--batch", "10", "--first-obu-id", "900000000"])
    deadline = time.time() + 30
    while metric(pport, "fleetstream_processor_positions_valid_total") < 500 and time.time() < deadline:
        time.sleep(0.1)
    ready = WORK / f"probe-{rate}-{time.time()}"
    probe_out = open(WORK / "probe.json", "w")
    COMMANDS.append(f"target/release/latency-probe --brokers {broker.brokers} --topic {t['positions']} --idle 5s &")
    probe = subprocess.Popen([str(REL / "latency-probe"), "--brokers", broker.brokers, "--topic", t["positions"],
                              "--idle", "5s", "--ready-file", str(ready)], stdout=probe_out, stderr=subprocess.DEVNULL)
    while not ready.exists():
        time.sleep(0.05)
    vehicles = min(max(rate // 10, 1000), 10_000)
    pids = {"receiver": rec.pid, "processor": proc.pid, "broker": broker.pid}
    cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
    s = sim(["--url", f"ws://127.0.0.1:{rport}/ws", "--mode", "load", "--rate", rate, "--duration", f"{E2E_SECONDS}s",
             "--vehicles", vehicles, "--connections", "8", "--batch", "10", "--max-in-flight", "5000"])
    probe.wait(120)
    # CPU-seconds per 1,000 positions of each stage (the probe's idle wait adds nothing).
    cpu = {k: 1000 * (cpu_seconds(v) - cpu0[k]) / max(s["acked"], 1) for k, v in pids.items()}
    probe_out.close()
    p = json.loads((WORK / "probe.json").read_text())

    def avg_ms(port, name, labels=None):
        count = metric(port, name + "_count", labels)
        return 1000 * metric(port, name + "_sum", labels) / count if count else 0.0

    breakdown = {
        "receipt_to_kafka_ack_ms": avg_ms(rport, "fleetstream_receiver_kafka_delivery_seconds"),
        "receipt_to_device_ack_ms": avg_ms(rport, "fleetstream_receiver_ack_latency_seconds"),
        "device_to_processed_ms": avg_ms(pport, "fleetstream_processor_end_to_end_seconds", {"from": "device"}),
        "receipt_to_processed_ms": avg_ms(pport, "fleetstream_processor_end_to_end_seconds", {"from": "receiver"}),
        "processor_batch_ms": avg_ms(pport, "fleetstream_processor_batch_seconds"),
        "processor_batch_records": metric(pport, "fleetstream_processor_batch_records_sum")
        / max(metric(pport, "fleetstream_processor_batch_records_count"), 1),
        # Where a batch's time goes (the processor's batch_step_seconds), average ms per batch.
        "steps_ms": {step: avg_ms(pport, "fleetstream_processor_batch_step_seconds", {"step": step})
                     for step in ("poll", "decide", "produce", "offsets", "commit")},
    }
    stop(proc)
    stop(rec)
    acked_per_s = s["acked"] / E2E_SECONDS
    # Sustained without growing lag: the rate was achieved, everything arrived, and no record
    # waited long (a growing backlog shows as a p99 of seconds).
    sustained = acked_per_s >= 0.95 * rate and p["records"] >= s["acked"] and p["latency_ms"]["p99"] <= SUSTAINED_P99_MS
    lat = p["latency_ms"]
    log(f"e2e {rate}/s: acked {acked_per_s:.0f}/s arrived {p['records']} p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} kept up: {sustained}")
    return {"acked_per_s": acked_per_s, "arrived": p["records"], "p50": lat["p50"], "p99": lat["p99"],
            "max": lat["max"], "sustained": sustained, "vehicles": vehicles, "mean_ms": lat.get("mean", 0.0),
            "breakdown": breakdown, "cpu_per_1k": cpu}


SPAN_RATES = [(1_000, "0.25"), (10_000, "0.025")]  # (positions/s, the receiver's --trace-sample-ratio): ~5,000 traces each


def stage_spans(broker, collector, rate, ratio):
    """Where a position's time goes: stage_e2e's load with tracing on in the receiver (sampling
    `ratio` of the positions) and the processor (following the receiver's decision), into
    `collector`; span-times splits each trace's receipt -> committed into its steps."""
    t = broker.topics()
    rport, pport = free_port(), free_port()
    otlp = ["--otlp-endpoint", collector.endpoint]
    rec = receiver(broker, t, rport, [*otlp, "--trace-sample-ratio", ratio])
    proc = processor(broker, t, pport, extra=otlp)
    deadline = time.time() + 30
    while metric(pport, "fleetstream_processor_assigned_partitions") < PARTITIONS and time.time() < deadline:
        time.sleep(0.1)
    sim(["--url", f"ws://127.0.0.1:{rport}/ws", "--mode", "load", "--rate", "1000", "--count", "500",
         "--vehicles", "100", "--connections", "8", "--batch", "10", "--first-obu-id", "900000000"])
    time.sleep(1)
    since_ms = time.time() * 1000
    vehicles = min(max(rate // 10, 1000), 10_000)
    s = sim(["--url", f"ws://127.0.0.1:{rport}/ws", "--mode", "load", "--rate", rate, "--duration", f"{2 * E2E_SECONDS}s",
             "--vehicles", vehicles, "--connections", "8", "--batch", "10", "--max-in-flight", "5000"])
    time.sleep(2)  # the last batches commit
    stop(proc)
    stop(rec)
    collector.settled()
    r = json.loads(run([REL / "span-times", "--spans", collector.spans, "--since-ms", f"{since_ms:.0f}"]))
    total = r["segments"][-1]
    log(f"spans {rate}/s: {r['traces']} traces, received -> committed p50 {total['p50']:.1f} p99 {total['p99']:.1f} ms, "
        f"{r['slow']} over {r['slow_ms']:.0f} ms")
    return {"rate": rate, "ratio": float(ratio), "acked": s["acked"], "seconds": 2 * E2E_SECONDS, **r}


def spans_section(broker):
    """stage_spans at each of SPAN_RATES, one collector for all."""
    n0 = len(COMMANDS)
    collector = Collector(WORK / "otelcol-spans")
    try:
        rates = [stage_spans(broker, collector, rate, ratio) for rate, ratio in SPAN_RATES]
    finally:
        stop(collector.proc)
    return {"date": time.strftime("%Y-%m-%d"), "rates": rates, "commands": commands_since(n0)}


def sysctl(name):
    """A kernel setting as text (net.core.somaxconn -> /proc/sys/net/core/somaxconn); '' if absent."""
    try:
        return " ".join(Path("/proc/sys", *name.split(".")).read_text().split())
    except OSError:
        return ""


def connection_limits():
    """The kernel limits 100k loopback connections meet, and the source addresses they need:
    one source address has the ephemeral port range towards the receiver (~28k ports)."""
    low, high = (int(x) for x in (sysctl("net.ipv4.ip_local_port_range") or "32768 60999").split())
    total = CONNECTIONS + CONN_ACTIVE
    # Three quarters of the range per address: ports in TIME_WAIT from earlier stages stay taken.
    addresses = max(2, -(-total // ((high - low + 1) * 3 // 4)))
    return {"nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1], "nr_open": sysctl("fs.nr_open"),
            "ip_local_port_range": f"{low}-{high}", "somaxconn": sysctl("net.core.somaxconn"),
            "nf_conntrack_max": sysctl("net.netfilter.nf_conntrack_max"), "tcp_mem": sysctl("net.ipv4.tcp_mem"),
            "source_addresses": f"127.0.0.1-127.0.0.{addresses}", "max_connections": total + 1_000,
            "max_connections_per_ip": 0}


def stage_floor(broker, rate, hops):
    """Kafka alone at `rate`/s with the services' client settings: send -> visible to the probe
    after one hop (floor 1) or through a plain copy loop, two hops (floor 2)."""
    t = broker.topics()
    args = ["--from", t["gpscoords"], "--hops", hops, "--rate", rate, "--seconds", E2E_SECONDS,
            "--vehicles", min(max(rate // 10, 1000), 10_000)]
    if hops == 2:
        args += ["--to", t["positions"]]
    cpu0 = (cpu_seconds(broker.pid), children_cpu_seconds())
    r = json.loads(run([REL / "hop-bench", "--brokers", broker.brokers, "latency", *args]))
    # Per 1,000 records: the broker's CPU, and hop-bench's (producer, copy loop and probe).
    cpu = {"broker": 1000 * (cpu_seconds(broker.pid) - cpu0[0]) / max(r["sent"], 1),
           "clients": 1000 * (children_cpu_seconds() - cpu0[1]) / max(r["sent"], 1)}
    lat = r["latency_ms"]
    log(f"floor {hops} hop(s) at {rate}/s: arrived {r['arrived']}/{r['sent']} p50 {lat['p50']} p99 {lat['p99']} max {lat['max']}; "
        f"cpu per 1k: broker {cpu['broker']:.3f}s clients {cpu['clients']:.3f}s")
    return {"sent": r["sent"], "arrived": r["arrived"], "failed": r["failed"], "p50": lat["p50"], "p99": lat["p99"], "max": lat["max"],
            "cpu_per_1k": cpu}


def stage_copy(broker):
    """The processor's floor: a plain copy loop (consume, produce, no validation, no
    transactions) over the same input as the processor stage, as fast as it goes."""
    t = broker.topics()
    run([REL / "produce-bench", "--brokers", broker.brokers, "--topic", t["gpscoords"], "--count", N_PROCESSOR,
         "--vehicles", 1000, "--invalid-ratio", "0.05", "--duplicate-ratio", "0.02"])
    pid0 = cpu_seconds(broker.pid)
    r = json.loads(run([REL / "hop-bench", "--brokers", broker.brokers, "copy", "--from", t["gpscoords"],
                        "--to", t["positions"], "--count", N_PROCESSOR]))
    log(f"copy loop: {r['per_s']:.0f}/s ({r['delivered']} delivered, {r['failed']} failed); broker cpu {cpu_seconds(broker.pid) - pid0:.1f}s")
    return r["per_s"]


CONN_RUNS = []  # one entry per stage_connections run: which of its two figures comes first


def stage_connections(broker):
    """Receiver memory per idle connection at CONNECTIONS, and the ack p99 of CONN_ACTIVE vehicles
    at 1/s alone and while the receiver holds CONNECTIONS - CONN_ACTIVE idle ones besides.
    Idle: reporting once a day (a first report at a random point of the day: ~1/s in all)."""
    limits = connection_limits()

    def rec():
        t = broker.topics()
        port = free_port()
        p = start("receiver-connections", [REL / "receiver", "--listen", f"127.0.0.1:{port}", "--kafka-brokers", broker.brokers,
                                           "--topic", t["gpscoords"], "--dlq-topic", t["gpscoords-dlq"], "--auth", "none",
                                           "--rate-limit", "0", "--max-connections", limits["max_connections"],
                                           "--max-connections-per-ip", "0", "--log-level", "warn"])
        wait_ready(port)
        # Warm-up, the same for both figures: the producer's first deliveries to new topics
        # wait for their metadata and leaders (hundreds of ms), which is no cost of connections.
        run([REL / "obu-sim", "--quiet", "--url", f"ws://127.0.0.1:{port}/ws", "--vehicles", 100, "--first-obu-id", 3_000_000_000,
             "--interval", "100ms", "--duration", "3s", "--log-level", "warn"], record=False)
        return p, port

    def fleet_cmd(n, first, interval, duration, extra=()):
        return [REL / "obu-sim", "--quiet", "--url", f"ws://127.0.0.1:{port}/ws", "--vehicles", n, "--first-obu-id", first,
                "--interval", interval, "--duration", duration, "--source-addresses", limits["source_addresses"],
                "--log-level", "warn", *extra]

    def reporting(label):
        """The active vehicles' run: their summary (--json), and the connections held midway.
        The first 5 s, CONN_ACTIVE vehicles connecting, are left out of the latency."""
        cmd = fleet_cmd(CONN_ACTIVE, 1_000_000_000, "1s", f"{CONN_SECONDS + 5}s", ["--latency-from", "5s", "--json"])
        COMMANDS.append(" ".join(str(c) for c in cmd).replace(str(ROOT) + "/", ""))
        out = WORK / f"sim-active-{label}-{time.time_ns()}.json"
        with open(out, "w") as summary, open(WORK / "sim-active.log", "a") as logf:
            p = subprocess.Popen([str(c) for c in cmd], stdout=summary, stderr=logf)
            procs.append(p)
            time.sleep(5 + CONN_SECONDS / 2)
            midway = metric(port, "fleetstream_receiver_connections")
            p.wait(CONN_SECONDS + 120)
        return json.loads(out.read_text()), midway

    def hold(n, what):
        begun = time.time()
        deadline = begun + 60 + n / 500
        while metric(port, "fleetstream_receiver_connections") < n and time.time() < deadline:
            time.sleep(0.2)
        held = metric(port, "fleetstream_receiver_connections")
        if held < n:
            log(f"connections: only {held:.0f} of {n} {what} held")
        return held, time.time() - begun

    def by_itself():
        nonlocal port
        r, port = rec()
        summary, _ = reporting("alone")
        stop(r)
        return summary

    # The figure to compare with: the active vehicles alone; before the other at even runs,
    # after it at odd ones, so that neither always meets the broker in the same state.
    CONN_RUNS.append(None)
    first = len(CONN_RUNS) % 2 == 1
    port = None
    alone = by_itself() if first else None
    # CONNECTIONS idle (two fleets, the second stopped for the active one), then the active.
    r, port = rec()
    time.sleep(1)
    before = rss_kib(r.pid)
    idle = start("sim-idle", fleet_cmd(CONNECTIONS - CONN_ACTIVE, 1, "24h", "10h"))
    held_idle, ramp_s = hold(CONNECTIONS - CONN_ACTIVE, "idle")
    extra = start("sim-idle-extra", fleet_cmd(CONN_ACTIVE, 2_000_000_000, "24h", "10h"))
    held, _ = hold(CONNECTIONS, "idle")
    time.sleep(2)
    after = rss_kib(r.pid)
    sim_rss, sim_cpu = rss_kib(idle.pid), cpu_seconds(idle.pid)
    stop(extra, signal.SIGINT)
    hold_back = time.time() + 30
    while metric(port, "fleetstream_receiver_connections") > held_idle and time.time() < hold_back:
        time.sleep(0.2)
    loaded, held_loaded = reporting("loaded")
    stop(idle, signal.SIGINT)
    stop(r)
    alone = alone or by_itself()
    per = (after - before) / max(held, 1)
    p99_alone, p99_loaded = alone["ack_latency_ms"]["p99"], loaded["ack_latency_ms"]["p99"]
    log(f"connections: {held:.0f} held (the first {held_idle:.0f} in {ramp_s:.1f} s), RSS {before} -> {after} KiB, {per:.1f} KiB each; "
        f"ack p99 of {CONN_ACTIVE} at 1/s {p99_alone:.1f} ms alone, {p99_loaded:.1f} ms beside {held_idle:.0f} idle "
        f"({held_loaded:.0f} held then)")
    return {"held": held, "rss_before_kib": before, "rss_after_kib": after, "per_conn_kib": per,
            "connect_per_s": held_idle / max(ramp_s, 1e-3), "sim_rss_kib": sim_rss, "sim_cpu_s": sim_cpu,
            "idle_held": held_idle, "held_loaded": held_loaded,
            "p50_alone_ms": alone["ack_latency_ms"]["p50"], "p99_alone_ms": p99_alone, "acked_alone": alone["acked"],
            "p50_loaded_ms": loaded["ack_latency_ms"]["p50"], "p99_loaded_ms": p99_loaded, "acked_loaded": loaded["acked"],
            "ratio": p99_loaded / p99_alone if p99_alone > 0 else float("nan"), "limits": limits}


def tracker_input(broker):
    """A `positions` topic holding N_TRACKER valid processed positions (1,000 vehicles), made
    once for the tracker stage's runs: produce-bench fills a raw topic, the processor (Kafka
    transactions) validates it."""
    t = broker.topics()
    run([REL / "produce-bench", "--brokers", broker.brokers, "--topic", t["gpscoords"], "--count", N_TRACKER, "--vehicles", 1000])
    port = free_port()
    proc = processor(broker, t, port)
    deadline = time.time() + 600
    while metric(port, "fleetstream_processor_positions_valid_total") < N_TRACKER:
        if time.time() > deadline:
            raise RuntimeError("tracker input: the processor did not validate the backlog in 600 s")
        time.sleep(0.2)
    stop(proc)  # drains: the last batch is committed before it exits
    log(f"tracker input: {N_TRACKER} positions in {t['positions']}")
    return t


def tracker_postgres():
    """A throw-away PostgreSQL for the tracker stage (None and why not, if it cannot start)."""
    try:
        WORK.chmod(0o755)  # the server runs as the postgres user, its data below WORK
        pg = Postgres(WORK / "pg", free_port())
        COMMANDS.append(f"{pg.bin}/initdb -D $WORK/pg/data -U fleetstream --auth=trust")
        pg.start(start)
        return pg, None
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        log(f"tracker: PostgreSQL not measured: {e}")
        return None, str(e)


TRACKER = {}  # the tracker stage's input topics, PostgreSQL and commands, from its first run


def commands_since(n):
    """The commands recorded since COMMANDS[n], each once, with $WORK for the run's directory."""
    return list(dict.fromkeys(c.replace(str(WORK), "$WORK") for c in COMMANDS[n:]))


def stage_tracker(broker, run_no):
    """Tracker ingest: a tracker with an empty database and a new consumer group stores the
    whole `positions` topic (N_TRACKER positions) into SQLite, then into PostgreSQL (started
    at the first run, stopped after the last). {"sqlite": ..., "postgres": ... or the reason
    it was not measured}."""
    n0 = len(COMMANDS)
    if not TRACKER:
        TRACKER["topics"] = tracker_input(broker)
        TRACKER["pg"], TRACKER["pg_missing"] = tracker_postgres()
    t, pg = TRACKER["topics"], TRACKER["pg"]
    out = {} if pg else {"postgres": {"not_measured": TRACKER["pg_missing"]}}
    backends = [("sqlite", f"sqlite://{WORK / f'tracker-{run_no}.db'}", lambda: 0.0)]
    if pg:
        pg.createdb(f"tracker{run_no}")
        backends.append(("postgres", pg.url(f"tracker{run_no}"), pg.cpu))
    for backend, url, extra_cpu in backends:
        port = free_port()
        cmd = tracker_command(REL / "tracker", port, broker.brokers, url, f"bench-tracker-{backend}-{run_no}", topics=t,
                              extra=["--batch-size", TRACKER_BATCH])
        r = backlog_run(start, stop, cmd, port, f"tracker-{backend}", N_TRACKER, extra_cpu)
        if backend == "sqlite":
            db = WORK / f"tracker-{run_no}.db"
            r["version"] = f"SQLite {sqlite_version(db)}"
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            r["rows"] = con.execute("SELECT count(*) FROM positions").fetchone()[0]
            con.close()
        else:
            r["version"] = f"PostgreSQL {pg.sql('SHOW server_version', f'tracker{run_no}')}"
            r["rows"] = int(pg.sql("SELECT count(*) FROM positions", f"tracker{run_no}"))
        log(f"tracker ({r['version']}): {r['steady_per_s']:.0f}/s stored ({r['per_s']:.0f}/s from ready), rows {r['rows']}, "
            f"mean batch {r['mean_batch'] or 0:.0f}; cpu tracker {r['tracker_cpu_s']:.1f}s database {r['db_cpu_s']:.1f}s")
        out[backend] = r
    TRACKER.setdefault("commands", commands_since(n0))
    if pg and run_no == RUNS - 1:
        stop(pg.proc, signal.SIGINT)  # a fast shutdown: its backends end with it
        shutil.rmtree(pg.dir / "data", ignore_errors=True)
    return out


def log_lines(path, messages):
    """{message: its numeric fields and `at` (Unix seconds)} of the last line of each message
    in a service's human-readable log."""
    found = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        for message in messages:
            if message in line:
                fields = {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)(?=\s|$)", line)}
                stamp = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", line)
                if stamp:
                    fields["at"] = (datetime.datetime.fromisoformat(stamp.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
                                    + float(stamp.group(2) or 0))
                found[message] = fields
    return found


def stage_takeover(broker, run_no):
    """Partition take-over: a single-partition raw topic holding one position of each of
    N_TAKEOVER vehicles, processed by a processor that is then stopped; a second processor in
    the same group takes the partition over: the time to restore its state, and from its start
    to its first committed batch of new input (N_TAKEOVER_NEW resent positions, which the
    restored state must recognise as duplicates)."""
    t = {k: f"takeover-{k}-{run_no}" for k in ("gpscoords", "positions", "vehicle-latest", "gpscoords-dlq", "events", "geofences")}
    one = kafka_local.KafkaLocal(ROOT, broker.local.dir, broker.local.port, partitions=1, log_level="warn")
    names = ["--topic-raw", t["gpscoords"], "--topic-positions", t["positions"], "--topic-latest", t["vehicle-latest"],
             "--topic-dlq", t["gpscoords-dlq"], "topics"]
    n0 = len(COMMANDS)
    COMMANDS.append(" ".join(one.command(*names)).replace(str(ROOT) + "/", ""))
    one(*names)
    run([REL / "produce-bench", "--brokers", broker.brokers, "--topic", t["gpscoords"], "--count", N_TAKEOVER, "--vehicles", N_TAKEOVER])
    group = f"bench-takeover-{run_no}"
    port = free_port()
    first = processor(broker, t, port, group=group, name=f"takeover-a-{run_no}")
    deadline = time.time() + 600
    while metric(port, "fleetstream_processor_positions_valid_total") < N_TAKEOVER:
        if time.time() > deadline:
            raise RuntimeError("takeover: the first processor did not process the input in 600 s")
        time.sleep(0.2)
    stop(first)  # leaves the group after committing its last batch
    # New input for the second processor: the first N_TAKEOVER_NEW positions again.
    run([REL / "produce-bench", "--brokers", broker.brokers, "--topic", t["gpscoords"], "--count", N_TAKEOVER_NEW,
         "--vehicles", N_TAKEOVER_NEW])
    port = free_port()
    began = time.time()
    # Info for its start, assignment and restore; the restore's phases are a debug line.
    second = processor(broker, t, port, group=group, log_level="info,fleetstream_processor::restore=debug",
                       name=f"takeover-b-{run_no}", ready=False)
    restored = committed = None
    rss = 0
    deadline = began + 300
    while committed is None:
        if time.time() > deadline or second.poll() is not None:
            raise RuntimeError("takeover: the second processor committed no batch within 300 s")
        samples = promtext.scrape(f"http://127.0.0.1:{port}/metrics")
        now = time.time()
        if samples is not None:
            value = lambda name: promtext.total(samples, name) or 0.0
            if restored is None and value("fleetstream_processor_state_loads_total") >= 1:
                restored, rss = now, rss_kib(second.pid)
            if value("fleetstream_processor_commits_total") >= 1:
                committed = now
                restored = restored or now
                rss = rss or rss_kib(second.pid)
        time.sleep(0.02)
    deadline = time.time() + 60
    while metric(port, "fleetstream_processor_records_consumed_total") < N_TAKEOVER_NEW and time.time() < deadline:
        time.sleep(0.1)
    duplicates = metric(port, "fleetstream_processor_duplicates_total")
    valid = metric(port, "fleetstream_processor_positions_valid_total")
    load_s = metric(port, "fleetstream_processor_state_load_seconds_sum")
    stop(second)
    lines = log_lines(WORK / f"takeover-b-{run_no}.log",
                      ["processor started", "partitions assigned", "partition state restored", "partition state restore phases"])
    line, phases = lines.get("partition state restored", {}), lines.get("partition state restore phases", {})
    at = lambda message: lines.get(message, {}).get("at", 0.0) - began if "at" in lines.get(message, {}) else None
    vehicles = int(line.get("vehicles", 0))
    secs = line.get("secs", load_s)
    r = {"vehicles": vehicles, "restore_s": secs, "vehicles_per_s": vehicles / secs if secs else None,
         # From the log's timestamps (the metrics endpoint answers late while the process starts).
         "started_s": at("processor started"), "assigned_s": at("partitions assigned"),
         "restored_s": at("partition state restored") or restored - began, "first_commit_s": committed - began,
         "phases": {k: phases.get(k) for k in ("latest_records", "latest_secs", "latest_decode_secs", "positions_tail_secs",
                                                "dlq_tail_secs")},
         "rss_kib": rss, "new_input": N_TAKEOVER_NEW, "duplicates": duplicates, "valid": valid,
         "already_written": int(line.get("already_written", 0)), "commands": commands_since(n0)}
    log(f"takeover: {vehicles} vehicles restored in {secs:.2f} s (phases {r['phases']}); start -> started {r['started_s']} s "
        f"-> assigned {r['assigned_s']} s -> restored {r['restored_s']:.2f} s -> first commit {r['first_commit_s']:.2f} s; "
        f"RSS {rss} KiB; new input {valid:.0f} valid {duplicates:.0f} duplicates")
    return r


def missed_latency_note(rate, b, p99, floor2_p99):
    """Why end-to-end p99 misses 1.5x floor 2 at `rate`, with the median run's own figures
    (`b`: its breakdown)."""
    st = b["steps_ms"]
    cycle = sum(st.values())
    return (f"Why end-to-end p99 at {rate}/s ({p99:.0f} ms) misses 1.5x floor 2 ({1.5 * floor2_p99:.0f} ms): the copy loop of floor 2 "
            "forwards each record as it comes and never waits for an acknowledgement, while the processor works in batches and, "
            "with Kafka transactions (the default), a position is visible to read_committed readers only when its whole batch "
            f"commits. Its batch cycle here: poll {st['poll']:.1f} ms, decide {st['decide']:.1f} ms, produce until acknowledged "
            f"{st['produce']:.1f} ms (overlapping the offsets' {st['offsets']:.1f} ms), commit {st['commit']:.1f} ms: about "
            f"{cycle:.0f} ms for {b['processor_batch_records']:.0f} records. A position arriving during a batch waits for that "
            "batch to commit, then for its own, so the processor's hop costs up to two cycles where the copy loop's costs a "
            "fetch and a linger. The produce step is the longest (per position in the spans section): librdkafka 2.12 sends one "
            "ProduceRequest per partition, with idempotence at most 5 in flight per broker connection, and a batch writes 12 "
            "partitions or more (6 of `positions`, 6 of `vehicle-latest`, the DLQ's and `events`' when it has some), so on one "
            "broker it takes three or more round trips, the first write to each partition in a transaction checked by the broker "
            "with the transaction coordinator (Kafka's default transaction.partition.verification.enable). One producer has one "
            "open transaction at a time; overlapping batch N+1's writes with batch N's commit needs a second transactional "
            "producer per instance (not done).")


def machine(broker):
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": f"{mem:.0f} GiB", "kernel": f"Linux {platform.release()}",
            "rustc": rustc, "date": time.strftime("%Y-%m-%d"), "broker": f"Apache Kafka {broker.version}"}


def compare_modes(broker):
    """The processor's two exactly-once modes on the same broker, alternating, RUNS times each:
    processor throughput and end-to-end latency at 1k/s and 10k/s. Prints a Markdown table."""
    global EXACTLY_ONCE
    rows = {}
    for i in range(RUNS):
        for mode in ("transactions", "rebuild"):
            EXACTLY_ONCE = mode
            log(f"modes: run {i + 1}/{RUNS}, {mode}")
            r = rows.setdefault(mode, {"per_s": [], "cpu": [], 1_000: [], 10_000: []})
            per_s, cpu, _ = stage_processor(broker)
            r["per_s"].append(per_s)
            r["cpu"].append(cpu[0])
            for rate in (1_000, 10_000):
                r[rate].append(stage_e2e(broker, rate))
    med = statistics.median
    print(f"| mode | processor records/s | processor CPU-s per {N_PROCESSOR} | e2e p50 / p99 at 1k/s (ms) | e2e p50 / p99 at 10k/s (ms) |")
    print("|---|---|---|---|---|")
    for mode, r in rows.items():
        lat = {rate: (med(x["p50"] for x in r[rate]), med(x["p99"] for x in r[rate])) for rate in (1_000, 10_000)}
        print(f"| {mode} | {med(r['per_s']):,.0f} (runs {', '.join(f'{x:,.0f}' for x in r['per_s'])}) | {med(r['cpu']):.1f} "
              f"| {lat[1_000][0]:.0f} / {lat[1_000][1]:.0f} | {lat[10_000][0]:.0f} / {lat[10_000][1]:.0f} |")


def only(broker, name):
    """BENCH_ONLY=tracing|spans: that section alone (after a warm-up of the paths it uses), merged
    into docs/benchmarks.json (every other figure kept), and docs/benchmarks.md regenerated."""
    log("warm-up")
    stage_baseline(broker)
    stage_ingest(broker)
    if name == "spans":
        stage_processor(broker)
        stage_e2e(broker, RATES[-1])
    else:
        stage_ingest(broker)
    load = Path("/proc/loadavg").read_text().split()[:3]
    section = stage_tracing(broker, TRACING_RUNS) if name == "tracing" else spans_section(broker)
    section["note"] = (f"Measured on {section['date']} by `BENCH_ONLY={name} scripts/bench` (this stage alone, after a warm-up "
                       f"on a broker of its own; load average {' / '.join(load)} before it), not in the same run as the "
                       "sections above.")
    path = ROOT / "docs" / "benchmarks.json"
    results = json.loads(path.read_text()) if path.exists() else {"machine": machine(broker), "runs": RUNS, "partitions": PARTITIONS}
    results[name] = section
    out = WORK / "results.json"
    out.write_text(json.dumps(results, indent=2))
    shutil.copy(out, path)
    subprocess.run([REL / "bench-report", "--input", out, "--docs", ROOT / "docs", "--font", FONT], check=True)
    log(f"done: the {name} section of docs/benchmarks.md (raw results in docs/benchmarks.json, logs in {WORK})")


def main():
    global WORK, CONNECTIONS, CONN_ACTIVE
    WORK = Path(tempfile.mkdtemp(prefix="fleetstream-bench-"))
    # SIGTERM (make interrupted, a CI timeout) unwinds like Ctrl-C, so that the broker is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # 100k connections need 100k descriptors in the receiver and as many in the simulators,
    # which inherit the limit: as root, the hard limit goes up to what they need (fs.nr_open caps it).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(CONNECTIONS + CONN_ACTIVE + 10_000, int(Path("/proc/sys/fs/nr_open").read_text()))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, want), max(hard, want)))
        hard = max(hard, want)
    except (ValueError, OSError):  # not root, or a container without CAP_SYS_RESOURCE
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < CONNECTIONS + 1000:
        CONNECTIONS = max(1000, hard - 1000)
        CONN_ACTIVE = min(CONN_ACTIVE, CONNECTIONS * 3 // 4)
        log(f"descriptor limit {hard} (raise it with ulimit -Hn as root): measuring {CONNECTIONS} connections, {CONN_ACTIVE} of them active")
    subprocess.run([ROOT / "scripts" / "kafka-local", "install"], check=True)
    if not FONT.exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core >/dev/null",
                       shell=True, check=True)
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "fleetstream-receiver", "-p", "fleetstream-processor",
                    "-p", "fleetstream-obu-sim", "-p", "fleetstream-tracker", "-p", "fleetstream-bench"], check=True, cwd=ROOT)
    COMMANDS.append("cargo build --release --locked -p fleetstream-receiver -p fleetstream-processor -p fleetstream-obu-sim -p fleetstream-tracker -p fleetstream-bench")
    # The tracing stage's collector, built now (once per change, minutes the first time) so that a
    # missing Go toolchain stops the suite before it starts, not at its end.
    subprocess.run([ROOT / "scripts" / "go-tools", "otelcol"], check=True, stdout=subprocess.DEVNULL)
    broker = Broker(WORK / "kafka")
    try:
        broker.start()
        if os.environ.get("BENCH_ONLY") in ("tracing", "spans"):
            only(broker, os.environ["BENCH_ONLY"])
            return
        if os.environ.get("BENCH_MODES") == "1":
            # Warm-up: the broker's JIT compiles the produce, fetch and transaction paths.
            stage_baseline(broker)
            stage_processor(broker)
            compare_modes(broker)
            return
        results = {"machine": machine(broker), "runs": RUNS, "partitions": PARTITIONS}
        # Warm-up, not reported: the broker is a JVM whose JIT compiler alone takes about a core
        # for its first minutes (seen per thread in /proc); every path measured later (produce,
        # fetch, consumer groups, transactions) runs once first.
        log("warm-up")
        stage_baseline(broker)
        stage_processor(broker)
        for hops in (1, 2):
            stage_floor(broker, RATES[-1], hops)
        stage_e2e(broker, RATES[-1])
        base, ingest, procs_, copies, conns, trk, take = [], [], [], [], [], [], []
        e2e = {r: [] for r in RATES}
        floors = {r: {1: [], 2: []} for r in RATES}
        for i in range(RUNS):
            log(f"run {i + 1}/{RUNS}")
            base.append(stage_baseline(broker))
            ingest.append(stage_ingest(broker))
            procs_.append(stage_processor(broker))
            copies.append(stage_copy(broker))
            for r in RATES:
                floors[r][1].append(stage_floor(broker, r, 1))
                floors[r][2].append(stage_floor(broker, r, 2))
                e2e[r].append(stage_e2e(broker, r))
            conns.append(stage_connections(broker))
            trk.append(stage_tracker(broker, i))
            take.append(stage_takeover(broker, i))
        results["baseline"] = {"per_s": base, "count": N_BASELINE}
        results["geofences"] = stage_geofences()
        results["ingest"] = {"per_s": [x[0] for x in ingest], "p50": [x[1]["p50"] for x in ingest],
                             "p99": [x[1]["p99"] for x in ingest], "count": N_INGEST}
        results["processor"] = {"per_s": [x[0] for x in procs_], "count": N_PROCESSOR, "invalid_pct": 5, "duplicate_pct": 2}
        results["copy"] = {"per_s": copies, "count": N_PROCESSOR}
        results["e2e"] = [{"rate": r, "vehicles": e2e[r][0]["vehicles"], **{k: [x[k] for x in e2e[r]] for k in
                           ("acked_per_s", "arrived", "p50", "p99", "max", "sustained", "cpu_per_1k")},
                           "steps_ms": [x["breakdown"]["steps_ms"] for x in e2e[r]],
                           "floors": {f"{h}": {k: [x[k] for x in floors[r][h]] for k in ("sent", "arrived", "failed", "p50", "p99", "max", "cpu_per_1k")}
                                      for h in (1, 2)}} for r in RATES]
        results["connections"] = {"count": CONNECTIONS, "active": CONN_ACTIVE, "active_seconds": CONN_SECONDS,
                                  "limits": conns[0]["limits"], **{k: [x[k] for x in conns] for k in conns[0] if k != "limits"}}
        results["tracker_ingest"] = {"count": N_TRACKER, "vehicles": 1000, "batch_size": TRACKER_BATCH,
                                     **{b: [x[b] for x in trk if b in x] for b in ("sqlite", "postgres")},
                                     "commands": TRACKER.get("commands", [])}
        results["tracing"] = stage_tracing(broker, TRACING_RUNS)
        results["spans"] = spans_section(broker)
        results["takeover"] = {"vehicles": N_TAKEOVER, "new_input": N_TAKEOVER_NEW, "exactly_once": EXACTLY_ONCE, "runs": take}
        ing_cpu = ingest[len(ingest) // 2]
        pr_cpu = procs_[len(procs_) // 2]
        notes = [
            f"Receiver ingest (one run, {ing_cpu[3]:.1f} s wall for {N_INGEST} positions): the receiver used {ing_cpu[2][0]:.1f} CPU-s "
            f"({1e6 * ing_cpu[2][0] / N_INGEST:.1f} µs per position), the broker {ing_cpu[2][1]:.1f} CPU-s and the simulator "
            f"{ing_cpu[2][2]:.1f} CPU-s of the {2 * ing_cpu[3]:.1f} the 2 cores had; floor 1's producer has no simulator beside it. "
            "The simulator, receiver and broker compete for two cores, so this stage measures the machine as much as the code.",
            f"Processor ({pr_cpu[2]:.1f} s wall for {N_PROCESSOR} records): the processor used {pr_cpu[1][0]:.1f} CPU-s, "
            f"the broker {pr_cpu[1][1]:.1f} CPU-s (it serves the fetches and, per batch, one transaction: the positions, "
            "DLQ and vehicle-latest records, the offsets and the commit markers).",
        ]
        for r in RATES:
            runs_r = sorted(e2e[r], key=lambda x: x["p99"])
            mid = runs_r[len(runs_r) // 2]
            b, st = mid["breakdown"], mid["breakdown"]["steps_ms"]
            notes.append(
                f"End to end at {r}/s (averages of the median run): device ts -> receipt {b['device_to_processed_ms'] - b['receipt_to_processed_ms']:.1f} ms "
                f"(the simulator's 5 ms tick and frame batching); receipt -> Kafka ack {b['receipt_to_kafka_ack_ms']:.1f} ms "
                f"(linger 5 ms + the broker's acks=all write); receipt -> validated by the processor {b['receipt_to_processed_ms']:.1f} ms; "
                f"a processor batch of {b['processor_batch_records']:.0f} records: poll {st['poll']:.1f} ms, decide {st['decide']:.1f} ms, "
                f"produce {st['produce']:.1f} ms (the offsets' {st['offsets']:.1f} ms overlap it), commit {st['commit']:.1f} ms; "
                "then the probe's read_committed fetch sees the record in `positions`.")
            floor2_p99 = statistics.median(x["p99"] for x in floors[r][2])
            if mid["p99"] > 1.5 * floor2_p99:
                notes.append(missed_latency_note(r, b, mid["p99"], floor2_p99))
        extra = os.environ.get("BENCH_NOTES")
        if extra and Path(extra).exists():
            notes += json.loads(Path(extra).read_text())
        results["notes"] = notes
        results["sustained_p99_ms"] = SUSTAINED_P99_MS
        results["commands"] = list(dict.fromkeys(COMMANDS))[:40]
    finally:
        for p in procs:
            stop(p, signal.SIGKILL)
        broker.stop()
    out = WORK / "results.json"
    out.write_text(json.dumps(results, indent=2))
    shutil.copy(out, ROOT / "docs" / "benchmarks.json")
    subprocess.run([REL / "bench-report", "--input", out, "--docs", ROOT / "docs", "--font", FONT], check=True)
    log(f"done: docs/benchmarks.md (raw results in docs/benchmarks.json, logs in {WORK})")


if __name__ == "__main__":
    main()
