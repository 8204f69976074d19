//! One broker+controller node: its `server.properties`, its storage and its JVM process.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cluster::{ClusterSpec, Lifetime};
use crate::install::Installation;
use crate::secure::Security;

/// Where one node listens and keeps its files.
#[derive(Debug, Clone)]
pub struct NodeAddr {
    /// KRaft node id, 1-based.
    pub id: u32,
    /// The client (PLAINTEXT) listener on 127.0.0.1.
    pub port: u16,
    /// The controller listener on 127.0.0.1.
    pub controller_port: u16,
    /// The node's directory: `server.properties`, `broker.log`, `data/`.
    pub dir: PathBuf,
}

impl NodeAddr {
    pub fn properties_path(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn is_formatted(&self) -> bool {
        self.data_dir().join("meta.properties").exists()
    }

    /// `127.0.0.1:port` of the client listener.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The node's `server.properties`. Replication follows the cluster size: a single node keeps
/// one copy of everything, a cluster of three keeps three and needs two in sync for acks=all.
pub fn properties(spec: &ClusterSpec, nodes: &[NodeAddr], node: &NodeAddr) -> anyhow::Result<String> {
    let voters: Vec<String> = nodes.iter().map(|v| format!("{}@127.0.0.1:{}", v.id, v.controller_port)).collect();
    let mut lines = vec![
        "# Written by kafka-local (crates/kafka-local/src/node.rs) at every start.".to_string(),
        "process.roles=broker,controller".to_string(),
        format!("node.id={}", node.id),
        format!("controller.quorum.voters={}", voters.join(",")),
        "controller.listener.names=CONTROLLER".to_string(),
        format!("log.dirs={}", node.data_dir().display()),
    ];
    match &spec.security {
        Some(security) => lines.extend(security.properties(node.port, node.controller_port)?.into_iter().map(|(k, v)| format!("{k}={v}"))),
        None => lines.extend([
            format!("listeners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}", node.port, node.controller_port),
            format!("advertised.listeners=PLAINTEXT://127.0.0.1:{}", node.port),
            "inter.broker.listener.name=PLAINTEXT".to_string(),
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".to_string(),
        ]),
    }
    lines.extend(broker_settings(nodes.len(), spec.partitions).into_iter().map(|(k, v)| format!("{k}={v}")));
    lines.extend(spec.extra.iter().map(|(k, v)| format!("{k}={v}")));
    Ok(lines.join("\n") + "\n")
}

/// The broker settings fleetstream runs with on a cluster of `nodes`, everywhere
/// (docker-compose.yml sets the same; the operations check compares them): topics are created
/// on purpose, never by a typo; a single node keeps one copy of everything, a cluster three
/// with two in sync for acks=all; internal topics are replicated like the data; consumer
/// groups form without the initial 3 s wait; a transaction left open by a crashed producer is
/// aborted within a second of its timeout.
pub fn broker_settings(nodes: usize, partitions: u32) -> Vec<(&'static str, String)> {
    let replicas = nodes.clamp(1, 3);
    let min_isr = if replicas >= 3 { 2 } else { 1 };
    vec![
        ("auto.create.topics.enable", "false".to_string()),
        ("num.partitions", partitions.to_string()),
        ("default.replication.factor", replicas.to_string()),
        ("min.insync.replicas", min_isr.to_string()),
        ("offsets.topic.replication.factor", replicas.to_string()),
        ("offsets.topic.num.partitions", "6".to_string()),
        ("transaction.state.log.replication.factor", replicas.to_string()),
        ("transaction.state.log.min.isr", min_isr.to_string()),
        ("transaction.state.log.num.partitions", "6".to_string()),
        ("share.coordinator.state.topic.replication.factor", replicas.to_string()),
        ("share.coordinator.state.topic.min.isr", min_isr.to_string()),
        ("group.initial.rebalance.delay.ms", "0".to_string()),
        ("transaction.abort.timed.out.transaction.cleanup.interval.ms", "1000".to_string()),
    ]
}

/// Formats the node's storage for `cluster_id` (once: a formatted node keeps its data).
pub fn format(install: &Installation, node: &NodeAddr, cluster_id: &str, security: Option<&Security>) -> anyhow::Result<()> {
    let scram = security.map(Security::format_args).transpose()?.unwrap_or_default();
    let output = Command::new(&install.java)
        .arg("-cp")
        .arg(install.classpath())
        .arg(format!("-Dlog4j2.configurationFile={}", install.log4j.display()))
        .arg("-Dkafka.log.level=warn")
        .args(["kafka.tools.StorageTool", "format", "--ignore-formatted", "-t", cluster_id, "-c"])
        .arg(node.properties_path())
        .args(scram)
        .stdin(Stdio::null())
        .output()
        .context("cannot run Kafka's StorageTool")?;
    if !output.status.success() {
        bail!(
            "formatting node {} failed: {}{}",
            node.id,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The cluster id a formatted node belongs to.
pub fn formatted_cluster_id(node: &NodeAddr) -> Option<String> {
    let text = std::fs::read_to_string(node.data_dir().join("meta.properties")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("cluster.id=")).map(str::to_string)
}

/// A running (or stopped) node process.
#[derive(Debug)]
pub struct Node {
    pub addr: NodeAddr,
    child: Option<Child>,
    /// For `Lifetime::Owned`: a `sh` that kills the JVM when our end of its stdin closes, i.e.
    /// when this process exits however it exits (a test harness's shared broker is a static
    /// that is never dropped, and a killed test run must not leave brokers behind).
    watchdog: Option<(Child, ChildStdin)>,
}

impl Node {
    pub fn new(addr: NodeAddr) -> Node {
        Node { addr, child: None, watchdog: None }
    }

    /// Starts the JVM. Its output goes to the node's `broker.log`.
    pub fn spawn(&mut self, install: &Installation, spec: &ClusterSpec, lifetime: Lifetime) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.addr.log_path())
            .with_context(|| format!("cannot open {}", self.addr.log_path().display()))?;
        let mut marker = log.try_clone()?;
        let _ = writeln!(marker, "--- kafka-local: starting node {} ---", self.addr.id);
        let mut command = Command::new(&install.java);
        command
            .arg(format!("-Xmx{}", spec.heap))
            .arg(format!("-Xms{}", spec.heap))
            .args(["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"])
            .arg(format!("-Dlog4j2.configurationFile={}", install.log4j.display()))
            .arg(format!("-Dkafka.log.level={}", spec.log_level))
            .arg("-cp")
            .arg(install.classpath())
            .arg("kafka.Kafka")
            .arg(self.addr.properties_path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        // Its own process group: a Ctrl-C meant for a test run or a script does not reach the
        // broker directly; the watchdog or `stop` ends it in order.
        command.process_group(0);
        let child = command.spawn().with_context(|| format!("cannot start {}", install.java.display()))?;
        if lifetime == Lifetime::Owned {
            self.watchdog = Some(watchdog(child.id())?);
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the JVM is alive (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                self.watchdog = None;
                false
            }
            None => false,
        }
    }

    /// The exit status, if the JVM has exited since it was started.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL: a crash. Returns at once when the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.watchdog = None;
    }

    /// SIGTERM, Kafka's controlled shutdown (leadership moves away first); SIGKILL if it takes
    /// longer than `within`.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else { bail!("node {} is not running", self.addr.id) };
        signal(child.id(), Signal::SIGTERM)?;
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.watchdog = None;
        Ok(status)
    }

    /// The last lines of the node's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.addr.log_path(), lines)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            self.kill();
        }
    }
}

/// Sends a signal to a process.
pub fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    kill(Pid::from_raw(pid), signal).with_context(|| format!("cannot send {signal} to {pid}"))
}

fn watchdog(pid: u32) -> anyhow::Result<(Child, ChildStdin)> {
    let mut child = Command::new("sh")
        .arg("-c")
        // Signals are ignored so that only the end of our stdin (this process gone) fires it.
        .arg("trap '' INT TERM HUP; while read -r _; do :; done; kill -9 \"$1\" 2>/dev/null")
        .arg("watchdog")
        .arg(pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the broker's watchdog (sh)")?;
    let stdin = child.stdin.take().context("watchdog without stdin")?;
    Ok((child, stdin))
}

/// The last `lines` lines of a file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes a file, creating its directory.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Whether a process exists.
pub fn signal_0(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok())
}
