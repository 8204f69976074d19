"""What the scripts need from crates/kafka-local, and a thin wrapper of scripts/kafka-local.

The Kafka version and the broker settings are read from the crate's source, so that nothing
here keeps a second copy: `KAFKA_VERSION` in src/lib.rs, `broker_settings` and the per-node
keys of `properties` in src/node.rs. (Parsed with regular expressions: the functions are
simple lists; anything the parser does not recognise is an error, never a silent skip.)
"""
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Set

LIB_RS = "crates/kafka-local/src/lib.rs"
NODE_RS = "crates/kafka-local/src/node.rs"

# Environment variables of the apache/kafka image that are the start script's, not broker
# properties (docker/README.md of Apache Kafka: "commonly used in starting kafka").
IMAGE_SCRIPT_VARS = {
    "KAFKA_HEAP_OPTS", "KAFKA_OPTS", "KAFKA_JMX_OPTS", "KAFKA_JMX_PORT", "KAFKA_JMX_HOSTNAME",
    "KAFKA_LOG4J_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_DEBUG",
    "KAFKA_LOG4J_ROOT_LOGLEVEL", "KAFKA_LOG4J_LOGGERS", "KAFKA_TOOLS_LOG4J_LOGLEVEL", "KAFKA_VERSION",
}


def kafka_version(root) -> str:
    """`KAFKA_VERSION` of crates/kafka-local/src/lib.rs."""
    text = (Path(root) / LIB_RS).read_text()
    m = re.search(r'^\s*pub\s+const\s+KAFKA_VERSION\s*:\s*&(?:\'static\s+)?str\s*=\s*"([^"]+)"\s*;', text, re.M)
    if not m:
        raise ValueError(f"no `pub const KAFKA_VERSION: &str = \"...\";` in {LIB_RS}")
    return m.group(1)


def _function(source: str, name: str):
    """(parameters, body) of `fn name(...) ... { body }` at the top level of a Rust file."""
    m = re.search(rf"^\s*(?:pub(?:\([^)]*\))?\s+)?fn\s+{name}\s*\(([^)]*)\)[^{{]*\{{(.*?)^\}}", source, re.M | re.S)
    if not m:
        raise ValueError(f"no function {name} in {NODE_RS}")
    return m.group(1), m.group(2)


def _value(expr: str, variables: Dict[str, str], key: str) -> str:
    expr = expr.strip()
    m = re.fullmatch(r'"((?:[^"\\]|\\.)*)"\s*\.\s*(?:to_string|to_owned|into)\(\)|String::from\("((?:[^"\\]|\\.)*)"\)', expr)
    if m:
        return m.group(1) if m.group(1) is not None else m.group(2)
    m = re.fullmatch(r"([a-z_][a-z0-9_]*)\s*\.\s*to_string\(\)|format!\(\"\{([a-z_][a-z0-9_]*)\}\"\)", expr)
    if m:
        var = m.group(1) or m.group(2)
        if var not in variables:
            raise ValueError(f"{key}: the value uses {var}, which is not a parameter of broker_settings")
        return variables[var]
    raise ValueError(f"{key}: cannot read the value expression `{expr}` of broker_settings")


def broker_settings(root, replicas: int = 1, min_isr: int = 1, partitions: int = 6) -> Dict[str, str]:
    """The (key, value) list of `broker_settings` in crates/kafka-local/src/node.rs, evaluated for
    the given parameters (a single node: one replica, min.insync.replicas 1, as `properties`)."""
    params, body = _function((Path(root) / NODE_RS).read_text(), "broker_settings")
    names = re.findall(r"([a-z_][a-z0-9_]*)\s*:", params)
    given = {"replicas": replicas, "min_isr": min_isr, "partitions": partitions}
    unknown = [n for n in names if n not in given]
    if unknown:
        raise ValueError(f"broker_settings has parameters this script does not know: {', '.join(unknown)}")
    variables = {n: str(given[n]) for n in names}
    settings: Dict[str, str] = {}
    tuples = re.findall(r"^[ \t]*\(", body, re.M)  # every entry starts a line
    for m in re.finditer(r'^[ \t]*\([ \t]*"([A-Za-z0-9_.\-]+)"[ \t]*,[ \t]*(.+?)[ \t]*\)[ \t]*,?[ \t]*$', body, re.M):
        key = m.group(1)
        if key in settings:
            raise ValueError(f"broker_settings sets {key} twice")
        settings[key] = _value(m.group(2), variables, key)
    if not settings or len(settings) != len(tuples):
        raise ValueError(f"read {len(settings)} of the {len(tuples)} entries of broker_settings: one entry per line, please")
    return settings


def node_keys(root) -> Set[str]:
    """The keys `properties` in node.rs writes per node besides broker_settings (roles, id,
    listeners, log.dirs...): a compose file sets these for its own network, not to match."""
    _, body = _function((Path(root) / NODE_RS).read_text(), "properties")
    keys = set(re.findall(r'"([a-z][a-z0-9_.\-]*)=', body))
    if not keys:
        raise ValueError("no `key=value` lines in properties() of node.rs")
    return keys


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
