"""What the scripts need from crates/kafka-local, and a thin wrapper of scripts/kafka-local.

The Kafka version and the broker settings come from the `kafka-local` binary itself, so that
nothing here keeps a second copy:

    kafka-local version                               the pinned Apache Kafka release
    kafka-local --nodes N --partitions P settings     the broker settings, KEY=VALUE per line

`binary(root)` is target/debug/kafka-local, built first when it is missing (check-ops, bench
and `make test` build or run it before they ask).
"""
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

BINARY = "target/debug/kafka-local"
SETTINGS_SOURCE = "broker_settings in crates/kafka-local/src/node.rs"

# The keys kafka-local writes per node besides its broker settings (`properties` in
# crates/kafka-local/src/node.rs): the node's identity, listeners, quorum and data directory. A
# compose file sets these for its own network, not to match. The binary does not print them
# (yet), so they are listed here: a per-node key kafka-local adds and the compose file sets
# makes the compose check fail until it is added here; one kafka-local drops stays allowed.
NODE_KEYS = frozenset({
    "process.roles", "node.id", "controller.quorum.voters", "listeners", "advertised.listeners",
    "controller.listener.names", "inter.broker.listener.name", "listener.security.protocol.map",
    "log.dirs",
})

# Environment variables of the apache/kafka image that are the start script's, not broker
# properties (docker/README.md of Apache Kafka: "commonly used in starting kafka").
IMAGE_SCRIPT_VARS = {
    "KAFKA_HEAP_OPTS", "KAFKA_OPTS", "KAFKA_JMX_OPTS", "KAFKA_JMX_PORT", "KAFKA_JMX_HOSTNAME",
    "KAFKA_LOG4J_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_DEBUG",
    "KAFKA_LOG4J_ROOT_LOGLEVEL", "KAFKA_LOG4J_LOGGERS", "KAFKA_TOOLS_LOG4J_LOGLEVEL", "KAFKA_VERSION",
}

VERSION = re.compile(r"\d+\.\d+\.\d+(?:[-.][0-9A-Za-z.-]+)?")
SETTING = re.compile(r"([A-Za-z0-9_.\-]+)=(.*)")


def binary(root) -> Path:
    """target/debug/kafka-local of the workspace at ROOT, built (`cargo build -q --locked -p
    fleetstream-kafka-local`) if it is missing. Raises RuntimeError if the build fails."""
    exe = Path(root) / BINARY
    if not exe.exists():
        cmd = ["cargo", "build", "-q", "--locked", "-p", "fleetstream-kafka-local"]
        r = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        if r.returncode != 0 or not exe.exists():
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr.strip()}")
    return exe


def _run(exe, *args: str) -> str:
    cmd = [str(exe), *args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"cannot run {' '.join(cmd)}: {e}") from e
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stderr.strip()}")
    return r.stdout


def kafka_version(exe) -> str:
    """The Apache Kafka release kafka-local runs: `kafka-local version`."""
    out = _run(exe, "version").strip()
    if not VERSION.fullmatch(out):
        raise ValueError(f"`kafka-local version` printed {out!r}, not a version")
    return out


def broker_settings(exe, nodes: int = 1, partitions: int = 6) -> Dict[str, str]:
    """The broker settings kafka-local runs a cluster of NODES with (`kafka-local --nodes N
    --partitions P settings`): {key: value}. A line that is not KEY=VALUE, a key set twice or
    no settings at all is an error, never a silent skip."""
    out = _run(exe, "--nodes", str(nodes), "--partitions", str(partitions), "settings")
    settings: Dict[str, str] = {}
    for line in out.splitlines():
        if not line.strip():
            continue
        m = SETTING.fullmatch(line.strip())
        if not m:
            raise ValueError(f"`kafka-local settings` printed {line!r}, not KEY=VALUE")
        if m.group(1) in settings:
            raise ValueError(f"`kafka-local settings` sets {m.group(1)} twice")
        settings[m.group(1)] = m.group(2)
    if not settings:
        raise ValueError("`kafka-local settings` printed no settings")
    return settings


def topic_settings(exe) -> Dict[str, Dict[str, str]]:
    """The topic-level settings kafka-local creates the pipeline topics with (`kafka-local
    topic-settings`, from fleetstream_core::topics): {topic: {key: value}}. A line that is not
    `TOPIC KEY=VALUE` or a key set twice for a topic is an error."""
    out = _run(exe, "topic-settings")
    topics: Dict[str, Dict[str, str]] = {}
    for line in out.splitlines():
        if not line.strip():
            continue
        topic, _, setting = line.strip().partition(" ")
        m = SETTING.fullmatch(setting)
        if not topic or not m:
            raise ValueError(f"`kafka-local topic-settings` printed {line!r}, not TOPIC KEY=VALUE")
        if m.group(1) in topics.setdefault(topic, {}):
            raise ValueError(f"`kafka-local topic-settings` sets {m.group(1)} of {topic} twice")
        topics[topic][m.group(1)] = m.group(2)
    return topics


def env_name(key: str) -> str:
    """The apache/kafka image's environment variable for a broker property: `.` -> `_`,
    `_` -> `__`, `-` -> `___`, upper case, prefixed with KAFKA_."""
    return "KAFKA_" + key.replace("_", "__").replace("-", "___").replace(".", "_").upper()


def property_name(var: str) -> Optional[str]:
    """The broker property an apache/kafka environment variable sets (None if it sets none)."""
    if not var.startswith("KAFKA_") or var in IMAGE_SCRIPT_VARS:
        return None
    out, rest = [], var[len("KAFKA_"):].lower()
    i = 0
    while i < len(rest):
        if rest.startswith("___", i):
            out.append("-")
            i += 3
        elif rest.startswith("__", i):
            out.append("_")
            i += 2
        elif rest[i] == "_":
            out.append(".")
            i += 1
        else:
            out.append(rest[i])
            i += 1
    return "".join(out)


# --- running it -----------------------------------------------------------------------------
def reserve_port_pair(host: str = "127.0.0.1", attempts: int = 50):
    """(P, sockets bound to P and P+1): kafka-local puts a node's controller one above its client
    port. Close the sockets just before starting the broker."""
    for _ in range(attempts):
        a = socket.socket()
        a.bind((host, 0))
        port = a.getsockname()[1]
        b = socket.socket()
        try:
            if port >= 65535:
                raise OSError("no port above")
            b.bind((host, port + 1))
        except OSError:
            a.close()
            b.close()
            continue
        return port, [a, b]
    raise RuntimeError("no two consecutive free ports")


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port P with P+1 free too (see reserve_port_pair)."""
    port, sockets = reserve_port_pair(host)
    for s in sockets:
        s.close()
    return port


def node_pids(directory) -> List[int]:
    """The pids kafka-local `start` recorded in DIR/node-*/pid, of nodes that are alive."""
    pids = []
    for f in sorted(Path(directory).glob("node-*/pid")):
        try:
            pid = int(f.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            continue
        pids.append(pid)
    return pids


def stray_pids(directory) -> List[int]:
    """JVMs started on DIR's nodes whose pid `start` did not record (a start that failed after
    spawning them): found by their server.properties path in /proc/*/cmdline."""
    markers = {os.fsencode(str(d / "node-")) for d in (Path(directory).absolute(), Path(directory).resolve())}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"kafka.Kafka\0" in cmdline and any(m in cmdline for m in markers):
            found.append(int(proc.name))
    return sorted(found)


class KafkaLocal:
    """scripts/kafka-local with a fixed --dir and --port (one node)."""

    def __init__(self, root, directory, port: int, partitions: int = 6, log_level: str = "warn"):
        self.script = Path(root) / "scripts" / "kafka-local"
        self.dir = Path(directory)
        self.port = port
        self.flags = ["--nodes", "1", "--dir", str(self.dir), "--port", str(port),
                      "--partitions", str(partitions), "--log-level", log_level]
        # KAFKA_FRESH in the caller's environment would wipe the data at every start.
        self.env = {k: v for k, v in os.environ.items() if k != "KAFKA_FRESH"}

    def command(self, *args: str) -> List[str]:
        return [str(self.script), *self.flags, *args]

    def __call__(self, *args: str) -> str:
        cmd = self.command(*args)
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr.strip()}")
        return r.stdout

    def start(self, fresh: bool = False) -> str:
        """Starts the node (waits until it is ready) and returns its bootstrap servers."""
        out = self(*(["--fresh"] if fresh else []), "start")
        lines = out.strip().splitlines()
        if not lines:
            raise RuntimeError("kafka-local start printed no bootstrap servers")
        return lines[-1].strip()

    def topics(self, raw: str, positions: str, latest: str, dlq: str) -> None:
        self("--topic-raw", raw, "--topic-positions", positions, "--topic-latest", latest, "--topic-dlq", dlq, "topics")

    def pids(self) -> List[int]:
        return node_pids(self.dir)

    def stop(self) -> None:
        """Stops the node cleanly; kills what a failed start may have left without a pid file."""
        try:
            self("stop")
        finally:
            self.kill_strays()

    def kill_strays(self) -> None:
        for pid in stray_pids(self.dir):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
