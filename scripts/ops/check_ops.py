"""The helper of scripts/check-ops: the static agreement checks, the pieces of the live run
(free ports, Prometheus' configuration, waiting for recovery, the broker's data) and the
evaluation of every dashboard and alert query against the run's Prometheus.

    PYTHONPATH=scripts python3 -m ops.check_ops static --root . --bin target/debug --work DIR
    PYTHONPATH=scripts python3 -m ops.check_ops evaluate --root . --work DIR --prometheus HOST:PORT --tracker yes

Checks print `PASS name` or `FAIL name` followed by indented details; check-ops collects them.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ops import kafka_local, promtext
from ops.dashboards import SYNTHETIC, dashboard_queries, dashboards, metric_names, substitute

SERVICES = {"receiver": "receiver", "processor": "processor", "tracker": "tracker", "obu-sim": "obu-sim"}  # compose service -> binary
LISTEN_VAR = {"receiver": "RECEIVER_LISTEN", "processor": "PROCESSOR_LISTEN", "tracker": "TRACKER_LISTEN", "obu-sim": "SIM_METRICS_LISTEN"}
# Where each alert is expected to stand in the scenario, (just before the broker is started
# again, at the end): "fires", "quiet" or "any". Every alert in prometheus/alerts.yml must be
# listed. The broker is stopped cleanly, stays down CHECK_OPS_OUTAGE seconds (8) and then takes
# its start-up time (about 5 s for Apache Kafka) to come back.
ALERT_EXPECT = {
    "FleetstreamTargetDown": ("quiet", "quiet"),
    "FleetstreamProcessorAbsent": ("quiet", "quiet"),
    "FleetstreamKafkaUnreachable": ("fires", "quiet"),  # the broker is down, then back
    "FleetstreamNoPositionsReceived": ("quiet", "quiet"),
    "FleetstreamConsumerLagHigh": ("quiet", "quiet"),
    # A short scenario with fewer than 20 vehicles: never 20 offline in 5 minutes.
    "FleetstreamVehiclesGoingOffline": ("quiet", "quiet"),
    "FleetstreamTrackerNotWriting": ("quiet", "quiet"),
    # 2% faults against a 5% threshold: quiet, outage or not (late resends are valid positions).
    "FleetstreamDLQRatioHigh": ("quiet", "quiet"),
    "FleetstreamDLQWriteFailures": ("any", "fires"),  # faults during the outage cannot reach the DLQ
    "FleetstreamReceiverBackPressure": ("fires", "fires"),  # kafka_unavailable refusals in the outage
    "FleetstreamReceiverInFlightHigh": ("quiet", "quiet"),
    "FleetstreamReceiverConnectionLimit": ("quiet", "quiet"),  # only unauthorized refusals
    # The outage hits a batch in progress and the processor retries, but each stage's first retry
    # creates its series, which rate() cannot see increase: fires only when a stage retried twice.
    "FleetstreamProcessorRetrying": ("any", "any"),
}
PINNED = re.compile(r"^[a-z0-9./_-]+(?::[A-Za-z0-9._-]*\d[A-Za-z0-9._-]*)?(?:@sha256:[0-9a-f]{64})?$")


def load_yaml(path):
    import yaml
    with open(path) as f:
        return yaml.safe_load(f)


def result(ok, name, details=()):
    print(("PASS " if ok else "FAIL ") + name)
    for d in details:
        print("  " + d)
    return ok


# --- --help ---------------------------------------------------------------------------------
def parse_help(text):
    """{env var: default or None} of a clap --help text (short or long form)."""
    out = {}
    for block in re.split(r"\n\s*(?:-\w, )?--", text):
        env = re.search(r"\[env: ([A-Z0-9_]+)", block)
        if not env:
            continue
        default = re.search(r"\[default: ([^\]]*)\]", block)
        out[env.group(1)] = default.group(1) if default else None
    return out


def help_options(binary):
    """{env var: default or None} of a binary, from its --help."""
    return parse_help(subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout)


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


# --- static ---------------------------------------------------------------------------------
def compose_variables(compose_text):
    """({VAR: default}, problems) of the ${VAR:-default} references of a compose file's text."""
    used, problems = {}, []
    text = "\n".join(l for l in compose_text.splitlines() if not l.lstrip().startswith("#"))
    for m in re.finditer(r"(?<!\$)\$\{([A-Za-z0-9_]+)(?:(:?-)([^}]*))?\}", text):
        name, default = m.group(1), m.group(3)
        if default is None:
            problems.append(f"${{{name}}} has no default: a clean clone without .env would not work")
        elif name in used and used[name] != default:
            problems.append(f"${{{name}}} has two defaults: {used[name]!r} and {default!r}")
        used[name] = default
    return used, problems


def read_env_file(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def image_pinned(image):
    tagged = (":" in image.split("/")[-1]) or "@sha256:" in image
    return tagged and bool(PINNED.match(image)) and not image.endswith(":latest")


def dockerfile_images(dockerfile):
    """The images a Dockerfile builds from (the syntax image included, its own stages not)."""
    stages = set()
    syntax = re.search(r"^#\s*syntax=(\S+)", dockerfile, re.M)
    images = [syntax.group(1)] if syntax else []
    for m in re.finditer(r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.M | re.I):
        if m.group(1) not in stages:
            images.append(m.group(1))
        if m.group(2):
            stages.add(m.group(2))
    return images


def kafka_agreement(exe, services, partitions):
    """Problems between docker-compose.yml's Kafka and kafka-local (the binary EXE): the image
    tag must be `kafka-local version`; every key of `kafka-local --nodes 1 settings` must be set
    to the same value, and the compose file may set no other broker property than the per-node
    ones. Returns (description, problems)."""
    problems = []
    try:
        version = kafka_local.kafka_version(exe)
        settings = kafka_local.broker_settings(exe, nodes=1, partitions=partitions)
    except (RuntimeError, ValueError) as e:
        return "kafka-local's version and settings could not be read", [str(e)]
    per_node = kafka_local.NODE_KEYS
    kafka_images = {name: svc.get("image", "") for name, svc in services.items()
                    if str(svc.get("image", "")).startswith("apache/kafka")}
    if "kafka" not in kafka_images:
        problems.append("the compose service kafka does not run an apache/kafka image")
    for name, image in sorted(kafka_images.items()):
        if image != f"apache/kafka:{version}":
            problems.append(f"service {name}: image {image}, kafka-local runs Apache Kafka {version} (apache/kafka:{version})")
    env = {k: str(v) for k, v in ((services.get("kafka") or {}).get("environment") or {}).items()}
    for key, value in settings.items():
        var = kafka_local.env_name(key)
        if var not in env:
            problems.append(f"kafka: {var} missing ({key}={value} in `kafka-local settings`)")
        elif env[var].lower() != value.lower():
            problems.append(f"kafka: {var}={env[var]}, `kafka-local settings` has {key}={value}")
    for var in sorted(env):
        key = kafka_local.property_name(var)
        if key and key not in settings and key not in per_node:
            problems.append(f"kafka: {var} sets {key}, which kafka-local does not (add it to "
                            f"{kafka_local.SETTINGS_SOURCE}, or drop it)")
    return f"docker-compose.yml runs kafka-local's Kafka: apache/kafka:{version}, the {len(settings)} settings of `kafka-local settings`", problems


class Static:
    """The static checks; each method returns (description, problems[, notes]): the check
    passes when there are no problems; notes are details shown either way."""

    def __init__(self, root, bin_dir, work):
        self.root, self.work = root, work
        self.resolved = load_yaml(os.path.join(work, "compose.resolved.yml"))
        self.defaults = load_yaml(os.path.join(work, "compose.defaults.yml"))
        self.services = self.resolved["services"]
        self.compose_text = open(os.path.join(root, "docker-compose.yml")).read()
        self.dockerfile = open(os.path.join(root, "Dockerfile")).read()
        self.helps = {}
        for binary in SERVICES.values():
            path = os.path.join(bin_dir, binary)
            if os.path.exists(path):
                self.helps[binary] = help_options(path)
        self.kafka_local = os.path.join(bin_dir, "kafka-local")
        self.kafka_help = help_options(self.kafka_local) if os.path.exists(self.kafka_local) else None
        self.datasource = load_yaml(os.path.join(root, "grafana/provisioning/datasources/prometheus.yml"))["datasources"][0]

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def env_example(self):
        env_example = read_env_file(self.path(".env.example"))
        used, problems = compose_variables(self.compose_text)
        for name, default in used.items():
            if name not in env_example:
                problems.append(f"{name} is used by docker-compose.yml but missing from .env.example")
            elif default is not None and env_example[name] != default:
                problems.append(f"{name}: .env.example says {env_example[name]!r}, the compose default is {default!r}")
        for name in env_example:
            if name not in used:
                problems.append(f"{name} is in .env.example but docker-compose.yml does not use it")
        if self.resolved != self.defaults:
            problems.append("the configuration with .env.example differs from the one without .env")
        return f".env.example lists every compose variable ({len(used)}) with the compose default", problems

    def images(self):
        problems = []
        cargo = open(self.path("Cargo.toml")).read()
        version = re.search(r'\[workspace\.package\][^\[]*?version\s*=\s*"([^"]+)"', cargo, re.S).group(1)
        images = []
        for name, svc in self.services.items():
            image = svc.get("image")
            if not image:
                problems.append(f"service {name} names no image")
                continue
            images.append(image)
            if not image_pinned(image):
                problems.append(f"service {name}: image {image} is not pinned to a version")
            if "build" in svc and not image.endswith(":" + version):
                problems.append(f"service {name}: built image {image} should carry the workspace version {version}")
        from_images = dockerfile_images(self.dockerfile)
        for image in from_images:
            if not image_pinned(image) or not re.search(r":[^/]*\d", image):
                problems.append(f"Dockerfile: {image} is not pinned to a version")
        return f"every image is pinned ({len(images)} in compose, {len(from_images)} in the Dockerfile)", problems

    def kafka(self):
        if self.kafka_help is None:
            return "kafka-local's settings", ["target/debug/kafka-local is not built"]
        partitions = int(self.kafka_help.get("KAFKA_PARTITIONS") or 0)
        return kafka_agreement(self.kafka_local, self.services, partitions)

    def variables(self):
        problems, notes, counted = [], [], 0
        for name, svc in self.services.items():
            target = (svc.get("build") or {}).get("target")
            if not target:
                continue
            if target not in SERVICES.values():
                problems.append(f"service {name} builds unknown target {target}")
                continue
            if target not in self.helps:
                if target == "tracker":
                    notes.append("tracker not built: its variables not checked")
                    continue
                problems.append(f"{target} binary missing")
                continue
            for var in (svc.get("environment") or {}):
                counted += 1
                if var not in self.helps[target]:
                    problems.append(f"service {name} sets {var}, which `{target} --help` does not list")
        # ENV in the Dockerfile: the shared runtime stage and each service stage
        current = None
        for line in self.dockerfile.splitlines():
            m = re.match(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
            if m:
                current = m.group(1)
                continue
            m = re.match(r"^ENV\s+([A-Z0-9_]+)=", line)
            if m and current:
                targets = list(SERVICES.values()) if current == "runtime" else [current]
                for t in targets:
                    if t in self.helps:
                        counted += 1
                        if m.group(1) not in self.helps[t]:
                            problems.append(f"Dockerfile stage {current} sets {m.group(1)}, which `{t} --help` does not list")
        for var in sorted(set(re.findall(r"\b(SIM_[A-Z0-9_]+)", open(self.path("docker/obu-sim")).read()))):
            if "obu-sim" in self.helps and var not in self.helps["obu-sim"]:
                problems.append(f"docker/obu-sim uses {var}, which `obu-sim --help` does not list")
        return f"every variable set for a service is one it reads ({counted}, from --help)", problems, notes

    def ports(self):
        problems = []
        prom = load_yaml(self.path("prometheus.yml"))
        prom_ports = {}
        for job in prom.get("scrape_configs", []):
            for sc in job.get("static_configs", []):
                for t in sc.get("targets", []):
                    host, _, port = t.rpartition(":")
                    prom_ports.setdefault(job["job_name"], set()).add((host, int(port)))
            for sd in job.get("dns_sd_configs", []):
                for n in sd.get("names", []):
                    prom_ports.setdefault(job["job_name"], set()).add((n, int(sd["port"])))
        ports = {}
        for name, svc in self.services.items():
            target = (svc.get("build") or {}).get("target")
            if not target:
                continue
            env = svc.get("environment") or {}
            default = self.helps.get(target, {}).get(LISTEN_VAR[target])
            if LISTEN_VAR[target] in env:
                port = port_of(env[LISTEN_VAR[target]])
                if default and port != port_of(default):
                    problems.append(f"{name}: {LISTEN_VAR[target]} port {port} is not the default {port_of(default)}")
            elif default:
                port = port_of(default)
            elif target == "tracker" and target not in self.helps:
                port = 30002  # documented default; the binary is not built
            else:
                problems.append(f"{name}: no port (set {LISTEN_VAR[target]})")
                continue
            ports[name] = port
            hc = (svc.get("healthcheck") or {}).get("test", [])
            if len(hc) < 3 or hc[1] != "healthcheck" or int(hc[2]) != port:
                problems.append(f"{name}: health check {hc} does not probe port {port}")
            for p in svc.get("ports", []) or []:
                tgt = int(str(p).split(":")[-1].split("/")[0]) if not isinstance(p, dict) else int(p["target"])
                if tgt != port:
                    problems.append(f"{name}: publishes container port {tgt}, the service listens on {port}")
            if prom_ports.get(name) != {(name, port)}:
                problems.append(f"prometheus.yml job {name} scrapes {prom_ports.get(name)}, expected {name}:{port}")
            # Dockerfile EXPOSE / HEALTHCHECK of the stage
            stage = re.search(rf"^FROM\s+\S+\s+AS\s+{re.escape(target)}\s*$(.*?)(?=^FROM\s|\Z)", self.dockerfile, re.M | re.S | re.I)
            if not stage:
                problems.append(f"Dockerfile has no stage {target}")
            else:
                body = stage.group(1)
                if f"EXPOSE {port}" not in body:
                    problems.append(f"Dockerfile stage {target} does not EXPOSE {port}")
                if f'"healthcheck", "{port}"' not in body:
                    problems.append(f"Dockerfile stage {target} HEALTHCHECK does not probe {port}")
            if "KAFKA_BROKERS" in self.helps.get(target, {}) and env.get("KAFKA_BROKERS") != "kafka:9092":
                problems.append(f"{name}: KAFKA_BROKERS is {env.get('KAFKA_BROKERS')}, expected kafka:9092")
        sim_url = (self.services.get("obu-sim", {}).get("environment") or {}).get("SIM_URL")
        if "receiver" in ports and sim_url != f"ws://receiver:{ports['receiver']}/ws":
            problems.append(f"obu-sim SIM_URL {sim_url} is not ws://receiver:{ports['receiver']}/ws")
        kafka_env = self.services.get("kafka", {}).get("environment", {})
        if "PLAINTEXT://kafka:9092" not in str(kafka_env.get("KAFKA_ADVERTISED_LISTENERS")):
            problems.append("kafka does not advertise PLAINTEXT://kafka:9092")
        if prom_ports.get("prometheus") != {("localhost", 9090)}:
            problems.append("prometheus.yml does not scrape Prometheus itself on localhost:9090")
        if self.datasource["url"] != "http://prometheus:9090":
            problems.append("the Grafana datasource does not point at http://prometheus:9090")
        return ("ports agree with the services' defaults (compose, health checks, Dockerfile, prometheus.yml, Grafana): "
                + ", ".join(f"{k} {v}" for k, v in sorted(ports.items()))), problems

    def topic_defaults(self):
        """{(binary, VAR): default topic} of the services' *_TOPIC options."""
        return {(binary, var): default for binary, opts in self.helps.items()
                for var, default in opts.items() if var.endswith("_TOPIC") and default}

    def topics(self):
        problems = []
        topic_defaults = self.topic_defaults()
        wanted = set(topic_defaults.values())
        for name, svc in self.services.items():
            target = (svc.get("build") or {}).get("target")
            for var, value in (svc.get("environment") or {}).items():
                if var.endswith("_TOPIC") and (target, var) in topic_defaults and value != topic_defaults[(target, var)]:
                    problems.append(f"{name}: {var}={value}, the service's default is {topic_defaults[(target, var)]}")
        if self.kafka_help is not None:
            local = {self.kafka_help.get(v) for v in ("TOPIC_RAW", "TOPIC_POSITIONS", "TOPIC_LATEST", "TOPIC_DLQ", "TOPIC_EVENTS", "TOPIC_GEOFENCES")}
            if local != wanted:
                problems.append(f"kafka-local creates {sorted(map(str, local))}, the services use {sorted(wanted)}")
        created = run_kafka_init(self.services.get("kafka-init"), self.work)
        if isinstance(created, str):
            problems.append(created)
        else:
            names = {t for t, _, _ in created}
            if names != wanted:
                problems.append(f"kafka-init creates {sorted(names)}, the services use {sorted(wanted)}")
            geofences = next((v for (b, k), v in topic_defaults.items() if k.endswith("GEOFENCES_TOPIC")), "geofences")
            parts = {p for t, p, _ in created if t != geofences}
            expected_parts = self.services["kafka-init"]["environment"].get("PARTITIONS")
            if parts != {str(expected_parts)}:
                problems.append(f"kafka-init partitions {parts}, expected {expected_parts}")
            cfg = {t: c for t, _, c in created}
            if {p for t, p, _ in created if t == geofences} != {"1"} or "cleanup.policy=compact" not in cfg.get(geofences, []):
                problems.append(f"{geofences} is not created compacted with one partition")
            latest = next((v for (b, k), v in topic_defaults.items() if k.endswith("LATEST_TOPIC")), "vehicle-latest")
            dlq = next((v for (b, k), v in topic_defaults.items() if k.endswith("DLQ_TOPIC")), "gpscoords-dlq")
            if "cleanup.policy=compact" not in cfg.get(latest, []):
                problems.append(f"{latest} is not created compacted")
            if not any(c.startswith("retention.ms=") for c in cfg.get(dlq, [])):
                problems.append(f"{dlq} is created without a retention")
            problems += self.topic_settings_agree(cfg)
        return "topic names agree with the services' defaults; kafka-init and kafka-local create them: " + ", ".join(sorted(wanted)), problems

    def topic_settings_agree(self, created):
        """Problems between kafka-init's topic settings ({topic: ["KEY=VALUE", ...]}, from the
        stub run) and `kafka-local topic-settings` (fleetstream_core::topics, what the services'
        --create-topics use too): every setting kafka-local gives a topic, kafka-init must give it
        with the same value, when creating it and when applying it again (kafka-init may add
        others, e.g. a retention)."""
        if not os.path.exists(self.kafka_local):
            return ["target/debug/kafka-local is not built: topic settings not compared"]
        try:
            wanted = kafka_local.topic_settings(self.kafka_local)
        except (RuntimeError, ValueError) as e:
            return [str(e)]
        problems = []
        for topic, settings in sorted(wanted.items()):
            given = created.get(topic, [])
            for key, value in sorted(settings.items()):
                values = {c.partition("=")[2] for c in given if c.partition("=")[0] == key}
                if values != {value}:
                    problems.append(f"kafka-init sets {key} of {topic} to {sorted(values) or 'nothing'}, "
                                    f"`kafka-local topic-settings` (fleetstream_core::topics) has {value}")
        return problems

    def secrets(self):
        """No secret in the compose file's environment or defaults: every token and password is a
        file-based secret in SECRETS_DIR, each one some service mounts and reads through a *_FILE
        setting (or docker/obu-sim, docker/tracker), and scripts/compose-secrets makes them all."""
        problems = []
        declared = self.resolved.get("secrets") or {}
        raw = load_yaml(self.path("docker-compose.yml"))
        for name, spec in (raw.get("secrets") or {}).items():
            if set(spec) != {"file"} or not str(spec["file"]).startswith("${SECRETS_DIR:-./secrets}/"):
                problems.append(f"secret {name} is not a file in SECRETS_DIR: {spec}")
        secretish = re.compile(r"TOKEN|PASSWORD|SECRET|DATABASE_URL|_KEY$")
        used = set()
        for svc_name, svc in self.services.items():
            mounted = {(s if isinstance(s, str) else s["source"]) for s in svc.get("secrets") or []}
            used |= mounted
            for m in sorted(mounted - set(declared)):
                problems.append(f"{svc_name} mounts secret {m}, which is not declared")
            for var, value in (svc.get("environment") or {}).items():
                if var.endswith("_FILE") or var.endswith("__FILE"):
                    if str(value).startswith("/run/secrets/") and str(value)[len("/run/secrets/"):] not in mounted:
                        problems.append(f"{svc_name}: {var}={value}, but the service does not mount that secret")
                elif secretish.search(var) and not var.endswith("_TLS_KEY"):
                    problems.append(f"{svc_name}: {var} is set in the environment; secrets come from files")
        for name in sorted(set(declared) - used):
            problems.append(f"secret {name} is declared but no service mounts it")
        made = os.path.join(self.work, "compose-secrets")
        r = subprocess.run([self.path("scripts/compose-secrets"), made], capture_output=True, text=True)
        if r.returncode != 0:
            problems.append(f"scripts/compose-secrets failed: {r.stderr.strip()}")
        else:
            files = set(os.listdir(made))
            if files != set(declared):
                problems.append(f"scripts/compose-secrets makes {sorted(files)}, the compose file declares {sorted(declared)}")
        return f"secrets come from files ({len(declared)}: {', '.join(sorted(declared))}), none from the environment or a default", problems

    def write_topics_env(self, path):
        """TOPIC_RAW=... lines: the processor's default topic names, for the live run."""
        topic_defaults = self.topic_defaults()
        with open(path, "w") as f:
            for var, key in (("TOPIC_RAW", "PROCESSOR_INPUT_TOPIC"), ("TOPIC_POSITIONS", "PROCESSOR_POSITIONS_TOPIC"),
                             ("TOPIC_LATEST", "PROCESSOR_LATEST_TOPIC"), ("TOPIC_DLQ", "PROCESSOR_DLQ_TOPIC"),
                             ("TOPIC_EVENTS", "PROCESSOR_EVENTS_TOPIC"), ("TOPIC_GEOFENCES", "PROCESSOR_GEOFENCES_TOPIC")):
                f.write(f"{var}={topic_defaults.get(('processor', key), '')}\n")

    def alerts(self):
        problems = []
        rules = alert_rules(self.root)
        tests = load_yaml(self.path("prometheus/alerts.test.yml"))
        firing, quiet = set(), set()
        for t in tests.get("tests", []):
            for a in t.get("alert_rule_test", []):
                (firing if a.get("exp_alerts") else quiet).add(a["alertname"])
        for r in rules:
            a = r["alert"]
            ann = r.get("annotations", {})
            if not ann.get("summary") or not ann.get("description"):
                problems.append(f"{a} lacks a summary or a description")
            if r.get("labels", {}).get("severity") not in ("critical", "warning"):
                problems.append(f"{a} has no severity label critical or warning (alertmanager/alertmanager.yml routes on it)")
            if not r.get("labels", {}).get("service"):
                problems.append(f"{a} has no service label (alertmanager/alertmanager.yml groups and inhibits by it)")
            if a not in firing:
                problems.append(f"{a} has no unit test where it fires")
            if a not in quiet:
                problems.append(f"{a} has no unit test where it does not fire")
            if a not in ALERT_EXPECT:
                problems.append(f"{a} has no expectation in scripts/ops/check_ops.py (ALERT_EXPECT)")
        return f"every alert ({len(rules)}) has a severity, a service, a summary, a description and unit tests firing and quiet", problems

    def dashboards(self):
        problems = []
        prov = load_yaml(self.path("grafana/provisioning/dashboards/fleetstream.yml"))
        path = prov["providers"][0]["options"]["path"]
        graf = self.services.get("grafana", {})
        mounts = [str(v) for v in graf.get("volumes", [])]
        if not any(m.endswith(f":{path}:ro") and "grafana/dashboards" in m for m in mounts):
            problems.append(f"grafana/dashboards is not mounted at the provider path {path}")
        home = graf.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
        if not home.startswith(path + "/") or not os.path.exists(self.path("grafana/dashboards", home[len(path) + 1:])):
            problems.append(f"the home dashboard {home} is not one of grafana/dashboards")
        ds_uid = self.datasource["uid"]
        uids, nq = set(), 0
        for f, dash in dashboards(self.root):
            if dash.get("uid") in uids:
                problems.append(f"{f}: duplicate uid {dash.get('uid')}")
            uids.add(dash.get("uid"))
            for title, expr, dsref in dashboard_queries(dash):
                nq += 1
                if (dsref or {}).get("uid") != ds_uid:
                    problems.append(f"{f} / {title}: datasource {dsref} is not the provisioned uid {ds_uid}")
                if not expr.strip():
                    problems.append(f"{f} / {title}: empty query")
        return f"dashboards provisioned: {len(uids)} dashboards, {nq} queries, datasource uid {ds_uid}", problems


def static(args):
    try:
        s = Static(args.root, args.bin, args.work)
    except Exception as e:  # noqa: BLE001 - any failure to read the inputs is one failed check
        return 0 if result(False, f"static checks could not read their inputs ({e}; see {args.work}/compose.err)") else 1
    ok = True
    for check in (s.env_example, s.images, s.kafka, s.variables, s.ports, s.topics, s.secrets, s.alerts, s.dashboards):
        try:
            name, problems, *notes = check()
        except Exception as e:  # noqa: BLE001
            name, problems, notes = f"static check {check.__name__}", [f"crashed: {e!r}"], []
        ok &= result(not problems, name, problems + [n for group in notes for n in group])
    s.write_topics_env(os.path.join(args.work, "topics.env"))
    return 0 if ok else 1


def run_kafka_init(svc, work):
    """Runs kafka-init's script against stub Kafka tools; returns [(topic, partitions, [configs])]."""
    if not svc:
        return "no kafka-init service"
    stub = os.path.join(work, "kafka-stub")
    os.makedirs(stub, exist_ok=True)
    log = os.path.join(work, "kafka-stub.log")
    open(log, "w").close()
    for tool in ("kafka-topics.sh", "kafka-configs.sh"):
        with open(os.path.join(stub, tool), "w") as f:
            f.write(f'#!/bin/sh\nprintf "{tool}" >> {log}; for a in "$@"; do printf " %s" "$a" >> {log}; done; echo >> {log}\n')
        os.chmod(os.path.join(stub, tool), 0o755)
    script = svc["command"][0] if isinstance(svc["command"], list) else svc["command"]
    script = script.replace("$$", "$").replace("/opt/kafka/bin", stub)
    entry = svc.get("entrypoint") or ["/bin/sh", "-c"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update({k: str(v) for k, v in (svc.get("environment") or {}).items()})
    r = subprocess.run(entry + [script], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return f"kafka-init's script failed: {r.stderr.strip()}"
    return parse_kafka_tool_calls(open(log).read())


def parse_kafka_tool_calls(log):
    """[(topic, partitions, [configs])] of the kafka-topics.sh --create and kafka-configs.sh calls
    the stub tools recorded (one call a line: the tool, then its arguments)."""
    created, configs = [], {}
    for line in log.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "kafka-topics.sh" and "--create" in words:
            t = words[words.index("--topic") + 1]
            p = words[words.index("--partitions") + 1]
            cfg = [words[i + 1] for i, w in enumerate(words) if w == "--config"]
            created.append((t, p, cfg))
        if words[0] == "kafka-configs.sh":
            added = words[words.index("--add-config") + 1].split(",")
            configs.setdefault(words[words.index("--entity-name") + 1], []).extend(added)
    return [(t, p, c + configs.get(t, [])) for t, p, c in created]


def alert_rules(root):
    return [r for g in load_yaml(os.path.join(root, "prometheus/alerts.yml"))["groups"] for r in g["rules"] if "alert" in r]


# --- the live run ---------------------------------------------------------------------------
def free_ports(args):
    """Prints a port for Kafka (with the one above it free for its controller), then N more."""
    kafka, held = kafka_local.reserve_port_pair()
    try:
        ports = []
        for _ in range(args.n):
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    finally:
        for s in held:
            s.close()
    print(" ".join(str(p) for p in [kafka, *ports]))


def prometheus_config(args):
    lines = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "  evaluation_interval: 1s",
             "rule_files:", f"  - {os.path.join(args.root, 'prometheus/alerts.yml')}", "scrape_configs:"]
    for t in args.targets:
        job, _, addr = t.partition("=")
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['{addr}']"]
    print("\n".join(lines))


def metric_value(port, name):
    """The sum of a metric's samples at 127.0.0.1:PORT/metrics (None: unreachable or absent)."""
    samples = promtext.scrape(f"http://127.0.0.1:{port}/metrics")
    return None if samples is None else promtext.total(samples, name)


def wait_recovered(args):
    """Until Kafka is back, the processor writes again and has caught up (lag under 500)."""
    start = metric_value(args.processor, "fleetstream_processor_positions_valid_total") or 0
    deadline = time.time() + args.timeout
    up = valid = lag = None
    while time.time() < deadline:
        up = metric_value(args.receiver, "fleetstream_receiver_kafka_up")
        valid = metric_value(args.processor, "fleetstream_processor_positions_valid_total") or 0
        lag = metric_value(args.processor, "fleetstream_processor_consumer_lag")
        if up == 1 and valid > start + 50 and lag is not None and lag < 500:
            return 0
        time.sleep(0.5)
    print(f"the pipeline did not recover within {args.timeout:.0f} s: kafka_up {up}, "
          f"valid positions +{valid - start:.0f}, consumer lag {lag}", file=sys.stderr)
    return 1


def broker_data(directory, topics):
    """{cluster_id, bytes: {topic: bytes of its log segments}} of a kafka-local node's data."""
    data = Path(directory) / "node-1" / "data"
    meta = data / "meta.properties"
    cluster_id = None
    if meta.exists():
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                cluster_id = line.split("=", 1)[1].strip()
    sizes = {}
    for t in topics:
        sizes[t] = sum(f.stat().st_size for f in data.glob(f"{t}-*/*.log") if re.fullmatch(rf"{re.escape(t)}-\d+", f.parent.name))
    return {"cluster_id": cluster_id, "bytes": sizes}


def data_kept(before, after):
    """Problems if the broker's data did not survive a restart."""
    problems = []
    if not before["cluster_id"]:
        problems.append("the broker had no formatted storage before the outage")
    elif before["cluster_id"] != after["cluster_id"]:
        problems.append(f"cluster id {before['cluster_id']} before the outage, {after['cluster_id']} after: the storage was reformatted")
    for t, n in before["bytes"].items():
        if n == 0:
            problems.append(f"{t} held no data before the outage")
        elif after["bytes"].get(t, 0) < n:
            problems.append(f"{t}: {n} bytes before the outage, {after['bytes'].get(t, 0)} after")
    return problems


def broker_snapshot(args):
    print(json.dumps(broker_data(args.dir, args.topics)))


def broker_kept(args):
    before = json.loads(Path(args.before).read_text())
    after = broker_data(args.dir, list(before["bytes"]))
    problems = data_kept(before, after)
    sizes = ", ".join(f"{t} {before['bytes'][t]} -> {after['bytes'].get(t, 0)} B" for t in before["bytes"])
    result(not problems, f"the broker kept its data through the outage (same --dir, no --fresh): cluster {before['cluster_id']}; {sizes}", problems)
    return 0


def query(prom, expr, at):
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    try:
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
    if body.get("status") != "success":
        raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]


def exported_names(work, tracker):
    """{metric name: service} of what the services served at the end of the run."""
    names = {}
    for svc in ("receiver", "processor", "obu-sim") + (("tracker",) if tracker else ()):
        for name in promtext.names(promtext.read(os.path.join(work, f"{svc}.metrics"))):
            names[name] = svc
    return names


def evaluate(args):
    work, prom, tracker = args.work, args.prometheus, args.tracker == "yes"
    t_outage = float(open(os.path.join(work, "t.outage_end")).read()) - 0.5
    t_end = float(open(os.path.join(work, "t.end")).read())
    exported = exported_names(work, tracker)

    def skip(names, expr=""):
        """A tracker query, when the tracker was not built."""
        return (not tracker) and (any(n.startswith("fleetstream_tracker_") for n in names)
                                  or re.search(r'job\s*=~?\s*"tracker"', expr) is not None)

    def unknown(names):
        return sorted(n for n in names if n not in exported and n not in SYNTHETIC)

    # Targets
    body = json.loads(urllib.request.urlopen(f"http://{prom}/api/v1/targets", timeout=10).read())
    down = [f"{t['labels']['job']} {t['lastError']}" for t in body["data"]["activeTargets"] if t["health"] != "up"]
    jobs = sorted(t["labels"]["job"] for t in body["data"]["activeTargets"])
    result(not down, f"Prometheus scraped every service ({', '.join(jobs)})", down)

    # Dashboards
    ok_count, problems, skipped = 0, [], 0
    for f, dash in dashboards(args.root):
        for title, expr, _ in dashboard_queries(dash):
            where = f"{f} / {title}: {expr}"
            try:
                e = substitute(expr)
            except ValueError as err:
                problems.append(f"{where}: {err}")
                continue
            names = metric_names(e)
            if skip(names, e):
                skipped += 1
                continue
            if not names:
                problems.append(f"{where}: selects no metric")
            if unknown(names):
                problems.append(f"{where}: no service exports {', '.join(unknown(names))}")
                continue
            try:
                res = query(prom, e, t_end)
            except ValueError as err:
                problems.append(f"{where}: query failed: {err}")
                continue
            if not res:
                problems.append(f"{where}: returned no data")
                continue
            ok_count += 1
    note = f" ({skipped} tracker queries skipped: tracker not built)" if skipped else ""
    result(not problems, f"every dashboard query ({ok_count}) names exported metrics and returned data{note}", problems)

    # Alerts
    problems, lines, skipped = [], [], 0
    rules = alert_rules(args.root)
    for r in rules:
        a, expr = r["alert"], r["expr"]
        names = metric_names(expr)
        if skip(names, expr):
            skipped += 1
            continue
        if unknown(names):
            problems.append(f"{a}: no service exports {', '.join(unknown(names))}")
            continue
        expect = ALERT_EXPECT.get(a)
        if not expect:
            problems.append(f"{a}: no expectation in ALERT_EXPECT")
            continue
        states = []
        for label, at, want in (("outage", t_outage, expect[0]), ("end", t_end, expect[1])):
            try:
                fires = bool(query(prom, expr, at))
            except ValueError as err:
                problems.append(f"{a}: query failed: {err}")
                break
            states.append(f"{label}: {'fires' if fires else 'quiet'}")
            if want != "any" and fires != (want == "fires"):
                problems.append(f"{a} at the {label}: {'fires' if fires else 'quiet'}, expected {want}")
        lines.append(f"{a:38} {', '.join(states)}")
    # Rule health as Prometheus evaluated them
    body = json.loads(urllib.request.urlopen(f"http://{prom}/api/v1/rules", timeout=10).read())
    for g in body["data"]["groups"]:
        for r in g["rules"]:
            if r.get("health") == "err":
                problems.append(f"{r['name']}: Prometheus reports {r.get('lastError')}")
    note = f" ({skipped} tracker alerts skipped: tracker not built)" if skipped else ""
    result(not problems, f"every alert expression ({len(rules) - skipped}) is valid, names exported metrics, fires or stays quiet as expected{note}",
           problems + lines)
    return 0


def stray_brokers(args):
    """Pids of Kafka nodes running on DIR that `kafka-local stop` does not know (a failed start)."""
    print(" ".join(str(p) for p in kafka_local.stray_pids(args.dir)))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="check_ops", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("static", help="the static agreement checks")
    s.add_argument("--root", required=True); s.add_argument("--bin", required=True); s.add_argument("--work", required=True)
    s = sub.add_parser("free-ports", help="a Kafka port (its controller's free too), then N more")
    s.add_argument("n", type=int)
    s = sub.add_parser("prometheus-config", help="Prometheus' configuration for the live run")
    s.add_argument("--root", required=True); s.add_argument("--targets", nargs="+", required=True)
    s = sub.add_parser("wait-recovered", help="until the pipeline flows again after the outage")
    s.add_argument("--receiver", required=True); s.add_argument("--processor", required=True); s.add_argument("--timeout", type=float, default=120)
    s = sub.add_parser("broker-snapshot", help="the broker's cluster id and log sizes, as JSON")
    s.add_argument("--dir", required=True); s.add_argument("--topics", nargs="+", required=True)
    s = sub.add_parser("broker-kept", help="check the data against a snapshot taken before the outage")
    s.add_argument("--dir", required=True); s.add_argument("--before", required=True)
    s = sub.add_parser("stray-brokers", help="pids of Kafka nodes on DIR without a pid file")
    s.add_argument("--dir", required=True)
    s = sub.add_parser("evaluate", help="every dashboard and alert query against the run's Prometheus")
    s.add_argument("--root", required=True); s.add_argument("--work", required=True)
    s.add_argument("--prometheus", required=True); s.add_argument("--tracker", choices=("yes", "no"), required=True)
    args = ap.parse_args(argv)
    fn = {"static": static, "free-ports": free_ports, "prometheus-config": prometheus_config,
          "wait-recovered": wait_recovered, "broker-snapshot": broker_snapshot, "broker-kept": broker_kept,
          "stray-brokers": stray_brokers, "evaluate": evaluate}[args.cmd]
    return fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
