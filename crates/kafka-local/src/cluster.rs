//! A KRaft cluster on this machine: one combined broker+controller node, or several with a
//! static controller quorum, each on its own ports and data directory.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::RngCore as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::ClientConfig;

use crate::install::Installation;
use crate::node::{self, Node, NodeAddr};
use crate::secure::Security;

/// Whether the nodes outlive this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed when the `Cluster` is dropped or this process exits (tests).
    Owned,
    /// Left running; `kafka-local stop` ends them (the command line's `start`).
    Detached,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Number of nodes, each broker and controller.
    pub nodes: u32,
    /// Client port of node 1; node i listens on `port + 2(i-1)` and its controller one above.
    /// 0 picks free ports.
    pub port: u16,
    /// Holds `node-<id>/` for every node.
    pub dir: PathBuf,
    /// Default partition count of new topics.
    pub partitions: u32,
    /// JVM heap per node (`-Xmx`, `-Xms`).
    pub heap: String,
    /// Root log level of the broker's log4j.
    pub log_level: String,
    /// Extra `server.properties` lines, applied last.
    pub extra: Vec<(String, String)>,
    /// SASL_SSL with ACLs ([`Security`]) instead of a PLAINTEXT listener.
    pub security: Option<Security>,
}

impl ClusterSpec {
    /// A spec with the defaults used by tests: free ports, quiet logs.
    pub fn new(nodes: u32, dir: PathBuf) -> ClusterSpec {
        ClusterSpec {
            nodes,
            port: 0,
            dir,
            partitions: 6,
            heap: "512m".to_string(),
            log_level: "warn".to_string(),
            extra: Vec::new(),
            security: None,
        }
    }

    fn addresses(&self) -> anyhow::Result<Vec<NodeAddr>> {
        (1..=self.nodes)
            .map(|id| {
                let (port, controller_port) = if self.port == 0 {
                    (free_port()?, free_port()?)
                } else {
                    let port = self.port + 2 * (id as u16 - 1);
                    (port, port + 1)
                };
                Ok(NodeAddr { id, port, controller_port, dir: self.dir.join(format!("node-{id}")) })
            })
            .collect()
    }
}

/// The cluster's nodes.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    install: Installation,
    lifetime: Lifetime,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Formats what is not formatted yet, starts every node and waits until all brokers are
    /// in the cluster's metadata.
    pub fn start(install: Installation, spec: ClusterSpec, lifetime: Lifetime) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::launch(install, spec, lifetime)?;
        cluster.wait_ready(Duration::from_secs(90))?;
        Ok(cluster)
    }

    /// Formats what is not formatted yet and starts every node, without waiting for them.
    pub fn launch(install: Installation, spec: ClusterSpec, lifetime: Lifetime) -> anyhow::Result<Cluster> {
        if spec.nodes == 0 {
            bail!("a cluster needs at least one node");
        }
        let addrs = spec.addresses()?;
        let cluster_id = addrs.iter().find_map(node::formatted_cluster_id).unwrap_or_else(random_cluster_id);
        for a in &addrs {
            node::write_file(&a.properties_path(), &node::properties(&spec, &addrs, a)?)?;
        }
        // Formatting is a JVM start of its own (about 1.5 s): the nodes are formatted in parallel.
        std::thread::scope(|s| {
            let handles: Vec<_> = addrs
                .iter()
                .filter(|a| !a.is_formatted())
                .map(|a| s.spawn(|| node::format(&install, a, &cluster_id, spec.security.as_ref())))
                .collect();
            handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| bail!("formatting panicked")))
        })?;
        let mut cluster = Cluster { nodes: addrs.into_iter().map(Node::new).collect(), spec, install, lifetime };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// Kills every node (also detached ones).
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let (install, spec, lifetime) = (&self.install, &self.spec, self.lifetime);
        let node = self.nodes.get_mut(index).context("no such node")?;
        node.spawn(install, spec, lifetime)
    }

    /// `bootstrap.servers` for clients: every node's client listener.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(|n| n.addr.address()).collect::<Vec<_>>().join(",")
    }

    /// A client config of the cluster's administrator: the bootstrap servers, and on a secure
    /// cluster the admin's SASL_SSL settings.
    pub fn admin_config(&self) -> anyhow::Result<ClientConfig> {
        self.admin_config_for(&self.bootstrap())
    }

    fn admin_config_for(&self, bootstrap: &str) -> anyhow::Result<ClientConfig> {
        match &self.spec.security {
            Some(security) => security.admin_config(bootstrap),
            None => {
                let mut config = ClientConfig::new();
                config.set("bootstrap.servers", bootstrap);
                Ok(config)
            }
        }
    }

    /// librdkafka settings of `user` on this cluster (none on a plaintext one).
    pub fn client_settings(&self, user: &str) -> anyhow::Result<Vec<(String, String)>> {
        match &self.spec.security {
            Some(security) => security.client_settings(user),
            None => Ok(Vec::new()),
        }
    }

    /// On a secure cluster: every service's SCRAM user and ACLs (`topics`, `groups`: the names
    /// the services run with).
    pub fn grant_access(&self, topics: &crate::topics::TopicNames, groups: &crate::access::Groups) -> anyhow::Result<()> {
        match &self.spec.security {
            Some(security) => security.grant_access(&self.bootstrap(), topics, groups),
            None => Ok(()),
        }
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    fn index_of(&self, id: u32) -> anyhow::Result<usize> {
        self.nodes.iter().position(|n| n.addr.id == id).with_context(|| format!("no node {id}"))
    }

    /// SIGKILL node `id` (a crash).
    pub fn kill(&mut self, id: u32) -> anyhow::Result<()> {
        let i = self.index_of(id)?;
        self.nodes[i].kill();
        Ok(())
    }

    /// SIGTERM node `id` and wait for its controlled shutdown.
    pub fn terminate(&mut self, id: u32) -> anyhow::Result<()> {
        let i = self.index_of(id)?;
        let status = self.nodes[i].terminate(Duration::from_secs(60))?;
        if !status.success() && status.code() != Some(143) {
            bail!("node {id} did not shut down cleanly: {status}\n{}", self.nodes[i].log_tail(20));
        }
        Ok(())
    }

    /// Starts node `id` again (same ports, same data) and waits until it is back in the
    /// cluster's metadata.
    pub fn restart(&mut self, id: u32) -> anyhow::Result<()> {
        let i = self.index_of(id)?;
        self.spawn(i)?;
        self.wait_ready(Duration::from_secs(90))
    }

    /// Whether every node's process is alive.
    pub fn all_running(&mut self) -> bool {
        self.nodes.iter_mut().all(Node::is_running)
    }

    /// Starts every stopped node without waiting.
    pub fn spawn_stopped(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    /// Terminates every node, all at once (the whole cluster going down).
    pub fn terminate_all(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            if let Some(pid) = n.pid() {
                let _ = node::signal(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        for n in &mut self.nodes {
            if n.is_running() {
                n.terminate(Duration::from_secs(60))?;
            }
        }
        Ok(())
    }

    /// Waits until every running node is a broker in the cluster's metadata.
    pub fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let running: Vec<NodeAddr> = self.nodes.iter_mut().filter_map(|n| n.is_running().then(|| n.addr.clone())).collect();
        let bootstrap = running.iter().map(NodeAddr::address).collect::<Vec<_>>().join(",");
        let client: BaseConsumer = self.admin_config_for(&bootstrap)?.set("log_level", "0").create().context("cannot create a metadata client")?;
        loop {
            for n in &mut self.nodes {
                if let Some(status) = n.exited() {
                    bail!("Kafka node {} exited at start-up ({status}); its log ends with:\n{}", n.addr.id, n.log_tail(30));
                }
            }
            if let Ok(metadata) = client.fetch_metadata(None, Duration::from_millis(1000)) {
                let ids: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
                if running.iter().all(|a| ids.contains(&(a.id as i32))) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self.nodes.iter().map(|n| format!("node {}:\n{}", n.addr.id, n.log_tail(15))).collect();
                bail!("Kafka ({bootstrap}) was not ready within {within:?}\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A KRaft cluster id: a random UUID in Kafka's URL-safe base64 form (22 characters).
pub fn random_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    loop {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        // A version-4 UUID, as Kafka's Uuid.randomUuid makes.
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let bits = u128::from_be_bytes(bytes);
        let id: String = (0..22)
            .map(|i| {
                let shift = 128i32 - 6 * (i + 1);
                let six = if shift >= 0 { (bits >> shift) & 0x3f } else { (bits << -shift) & 0x3f };
                ALPHABET[six as usize] as char
            })
            .collect();
        // Kafka refuses ids that start with '-' on the command line.
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafkas() {
        for _ in 0..100 {
            let id = random_cluster_id();
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-'));
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{id}");
        }
    }

    #[test]
    fn a_three_node_cluster_replicates_three_times_and_needs_two_in_sync() {
        let spec = ClusterSpec { port: 9092, ..ClusterSpec::new(3, PathBuf::from("/tmp/x")) };
        let addrs = spec.addresses().unwrap_or_default();
        let text = node::properties(&spec, &addrs, &addrs[1]).unwrap_or_default();
        assert!(text.contains("node.id=2\n"), "{text}");
        assert!(text.contains("controller.quorum.voters=1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097\n"), "{text}");
        assert!(text.contains("listeners=PLAINTEXT://127.0.0.1:9094,CONTROLLER://127.0.0.1:9095\n"), "{text}");
        assert!(text.contains("default.replication.factor=3\n") && text.contains("min.insync.replicas=2\n"), "{text}");
        assert!(text.contains("transaction.state.log.min.isr=2\n"), "{text}");
        let single = ClusterSpec::new(1, PathBuf::from("/tmp/y"));
        let addrs = single.addresses().unwrap_or_default();
        let text = node::properties(&single, &addrs, &addrs[0]).unwrap_or_default();
        assert!(text.contains("offsets.topic.replication.factor=1\n") && text.contains("min.insync.replicas=1\n"), "{text}");
    }
}
