//! `kafka-local`: Apache Kafka on this machine (see the crate docs). `scripts/kafka-local` runs it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use nix::sys::signal::Signal;

use fleetstream_core::kafka::KafkaArgs;
use fleetstream_kafka_local::access::{self, Groups, SERVICES};
use fleetstream_kafka_local::topics::{self, TopicNames};
use fleetstream_kafka_local::{install, node, Cluster, ClusterSpec, Installation, Lifetime, Security, KAFKA_VERSION};
use rdkafka::ClientConfig;

/// Apache Kafka on this machine: installs a pinned release from Maven Central (once, cached)
/// and runs one combined broker+controller node or a KRaft cluster of several.
#[derive(Debug, clap::Parser)]
#[command(name = "kafka-local", version, about)]
struct Config {
    #[command(subcommand)]
    command: Action,

    /// Number of nodes (each a broker and a controller). 3 gives replication factor 3 with
    /// min.insync.replicas=2.
    #[arg(long, env = "KAFKA_NODES", default_value_t = 1, global = true)]
    nodes: u32,

    /// Client port of node 1; node i listens on PORT+2(i-1), its controller one above.
    #[arg(long, env = "KAFKA_PORT", default_value_t = 9092, global = true)]
    port: u16,

    /// Directory of the nodes' configuration, logs and data (node-<id>/ each).
    #[arg(long, env = "KAFKA_DIR", default_value = ".local/kafka", global = true)]
    dir: PathBuf,

    /// Partitions of the pipeline topics (and of topics created without a count).
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = 6, global = true)]
    partitions: u32,

    /// JVM heap per node.
    #[arg(long, env = "KAFKA_HEAP", default_value = "512m", global = true)]
    heap: String,

    /// The broker's log level (log4j: error, warn, info, debug).
    #[arg(long, env = "KAFKA_LOG_LEVEL", default_value = "info", global = true)]
    log_level: String,

    /// A locked-down cluster: SASL_SSL only (SCRAM-SHA-512, also SCRAM-SHA-256 and PLAIN), the
    /// StandardAuthorizer with ACLs, one user per service. The CA and every password are made
    /// once under DIR/security/ (docs/security.md).
    #[arg(long, env = "KAFKA_SECURE", default_value_t = false, global = true)]
    secure: bool,

    /// Start from empty storage (deletes the directory's data first).
    #[arg(long, env = "KAFKA_FRESH", default_value_t = false, global = true)]
    fresh: bool,

    #[command(flatten)]
    topics: TopicNames,

    #[command(flatten)]
    groups: Groups,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Fetch Apache Kafka into the cache if it is not there yet.
    Install,
    /// Start in the background, create the pipeline topics, print the bootstrap servers.
    Start,
    /// Start in the foreground; Ctrl-C (or SIGTERM) shuts the nodes down cleanly.
    Run,
    /// Shut the background nodes down cleanly (SIGTERM, then wait).
    Stop,
    /// Create the pipeline topics that do not exist yet.
    Topics,
    /// Print the bootstrap servers and the state of each node.
    Status,
    /// Print the directory holding the broker's jars.
    Path,
    /// Create each service's SASL user and its ACLs on a cluster (the admin's connection is
    /// given with the --kafka-* flags), or print them as kafka-configs.sh/kafka-acls.sh commands.
    Access(AccessArgs),
    /// Print the Apache Kafka version.
    Version,
    /// Print the broker settings of this cluster size, KEY=VALUE per line (what docker-compose.yml
    /// must agree with).
    Settings,
    /// Print the topic-level settings the pipeline topics are created with, `TOPIC KEY=VALUE` per
    /// line (what docker-compose.yml's kafka-init must agree with).
    TopicSettings,
}

#[derive(Debug, clap::Args)]
struct AccessArgs {
    /// Only print the users and ACLs as Kafka's own commands; change nothing.
    #[arg(long, env = "KAFKA_ACCESS_PRINT", default_value_t = false)]
    print: bool,

    /// Directory of `<user>.password` files, one per service; a missing one is created with a
    /// random password (mode 0600). With --secure: DIR/security/secrets.
    #[arg(long, env = "KAFKA_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,

    /// How to reach the cluster as its administrator.
    #[command(flatten)]
    admin: KafkaArgs,
}

fn say(message: &str) {
    eprintln!("kafka-local: {message}");
}

fn main() {
    let config = Config::parse();
    if let Err(error) = run(config) {
        eprintln!("kafka-local: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    match config.command {
        Action::Install => {
            let i = Installation::ensure(&say)?;
            say(&format!("Apache Kafka {KAFKA_VERSION} ready in {}", i.libs.display()));
            Ok(())
        }
        Action::Path => {
            let i = Installation::ensure(&say)?;
            println!("{}", i.libs.display());
            Ok(())
        }
        Action::Start => start(&config),
        Action::Run => foreground(&config),
        Action::Stop => stop(&config.dir),
        Action::Topics => create_topics(&config, &bootstrap(&config)),
        Action::Access(ref args) => grant_access(&config, args),
        Action::Status => status(&config),
        Action::Version => {
            println!("{KAFKA_VERSION}");
            Ok(())
        }
        Action::Settings => {
            for (k, v) in node::broker_settings(config.nodes as usize, config.partitions) {
                println!("{k}={v}");
            }
            Ok(())
        }
        Action::TopicSettings => {
            for spec in config.topics.specs(i32::try_from(config.partitions)?) {
                for (k, v) in &spec.configs {
                    println!("{} {k}={v}", spec.name);
                }
            }
            Ok(())
        }
    }
}

fn spec(config: &Config) -> anyhow::Result<ClusterSpec> {
    Ok(ClusterSpec {
        port: config.port,
        partitions: config.partitions,
        heap: config.heap.clone(),
        log_level: config.log_level.clone(),
        security: security(config)?,
        ..ClusterSpec::new(config.nodes, config.dir.clone())
    })
}

/// With --secure: the cluster's CA and passwords (made on first use).
fn security(config: &Config) -> anyhow::Result<Option<Security>> {
    config.secure.then(|| Security::prepare(&config.dir.join("security"))).transpose()
}

/// The administrator's client config on this machine's cluster.
fn admin_config(config: &Config, bootstrap: &str) -> anyhow::Result<ClientConfig> {
    match security(config)? {
        Some(security) => security.admin_config(bootstrap),
        None => {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", bootstrap);
            Ok(c)
        }
    }
}

/// `kafka-local access`: users and ACLs for every service, on any cluster.
fn grant_access(config: &Config, args: &AccessArgs) -> anyhow::Result<()> {
    let acls = access::acls(&config.topics, &config.groups);
    if args.print {
        let users: Vec<&str> = SERVICES.iter().map(|s| s.user).collect();
        for line in access::commands(&users, &acls) {
            println!("{line}");
        }
        return Ok(());
    }
    let dir = match (&args.secrets_dir, config.secure) {
        (Some(dir), _) => dir.clone(),
        (None, true) => config.dir.join("security/secrets"),
        (None, false) => anyhow::bail!("--secrets-dir is needed: where each service's password file is (or is to be made)"),
    };
    let mut users = Vec::new();
    for s in SERVICES {
        let file = dir.join(format!("{}.password", s.user));
        if !file.exists() {
            fleetstream_kafka_local::secure::write_secret(&file, &fleetstream_kafka_local::secure::random_password())?;
            say(&format!("made a password for {} in {}", s.user, file.display()));
        }
        users.push((s.user.to_string(), fleetstream_core::secret::Secret::from_file(&file)?.expose().to_string()));
    }
    args.admin.validate()?;
    let mut admin = args.admin.client_config();
    args.admin.apply_overrides(&mut admin);
    access::apply(&admin, &users, &acls)?;
    say(&format!("users {} and {} ACLs in place on {}", users.iter().map(|u| u.0.as_str()).collect::<Vec<_>>().join(", "), acls.len(), args.admin.brokers));
    Ok(())
}

fn bootstrap(config: &Config) -> String {
    (0..config.nodes).map(|i| format!("127.0.0.1:{}", config.port + 2 * i as u16)).collect::<Vec<_>>().join(",")
}

fn prepare(config: &Config) -> anyhow::Result<Installation> {
    let install = Installation::ensure(&say)?;
    if config.fresh && config.dir.exists() {
        say(&format!("--fresh: deleting {}", config.dir.display()));
        std::fs::remove_dir_all(&config.dir).with_context(|| format!("cannot delete {}", config.dir.display()))?;
    }
    Ok(install)
}

fn describe(config: &Config) -> String {
    match config.nodes {
        1 => format!("Apache Kafka {KAFKA_VERSION}, one node (KRaft broker+controller)"),
        n => format!("Apache Kafka {KAFKA_VERSION}, {n}-node KRaft cluster (replication 3, min.insync.replicas 2)"),
    }
}

fn start(config: &Config) -> anyhow::Result<()> {
    let running = running_pids(&config.dir);
    if !running.is_empty() {
        say(&format!("already running (pids {running:?}) on {}", bootstrap(config)));
        return create_topics(config, &bootstrap(config));
    }
    let install = prepare(config)?;
    say(&format!("starting {} on {}", describe(config), bootstrap(config)));
    let started = Instant::now();
    let mut cluster = Cluster::launch(install, spec(config)?, Lifetime::Detached)?;
    // Pid files first: `stop` must find the nodes even if they never become ready.
    for n in cluster.nodes() {
        if let Some(pid) = n.pid() {
            std::fs::write(n.addr.dir.join("pid"), pid.to_string())?;
        }
    }
    if let Err(error) = cluster.wait_ready(Duration::from_secs(90)) {
        cluster.kill_all();
        for n in cluster.nodes() {
            let _ = std::fs::remove_file(n.addr.dir.join("pid"));
        }
        return Err(error);
    }
    say(&format!("ready in {:.1} s; logs in {}/node-*/broker.log", started.elapsed().as_secs_f64(), config.dir.display()));
    create_topics(config, &cluster.bootstrap())?;
    println!("{}", cluster.bootstrap());
    Ok(())
}

fn foreground(config: &Config) -> anyhow::Result<()> {
    let install = prepare(config)?;
    say(&format!("starting {} on {} (Ctrl-C stops it)", describe(config), bootstrap(config)));
    let mut cluster = Cluster::start(install, spec(config)?, Lifetime::Owned)?;
    create_topics(config, &cluster.bootstrap())?;
    say(&format!("ready on {}; logs in {}/node-*/broker.log", cluster.bootstrap(), config.dir.display()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(fleetstream_core::shutdown::signal());
    say("shutting down");
    cluster.terminate_all()
}

fn create_topics(config: &Config, bootstrap: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let partitions = i32::try_from(config.partitions).context("too many partitions")?;
    runtime.block_on(topics::create(&admin_config(config, bootstrap)?, &config.topics.specs(partitions)))?;
    if let Some(security) = security(config)? {
        security.grant_access(bootstrap, &config.topics, &config.groups)?;
        say(&format!(
            "SASL_SSL with ACLs: services connect with --kafka-security-protocol sasl_ssl --kafka-ssl-ca-file {} \
             --kafka-sasl-username <receiver|processor|tracker|dlq> --kafka-sasl-password-file {}",
            security.ca_file().display(),
            security.password_file("<user>").display()
        ));
    }
    say(&format!(
        "topics ready: {}, {}, {} (compacted), {} ({partitions} partitions each)",
        config.topics.raw, config.topics.positions, config.topics.latest, config.topics.dlq
    ));
    Ok(())
}

/// Pids of background nodes that are alive.
fn running_pids(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("pid")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .filter(|pid| node::signal_0(*pid))
        .collect();
    pids.sort_unstable();
    pids
}

fn stop(dir: &Path) -> anyhow::Result<()> {
    let pids = running_pids(dir);
    if pids.is_empty() {
        say("no background broker running");
    }
    for pid in &pids {
        let _ = node::signal(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while pids.iter().any(|p| node::signal_0(*p)) {
        if Instant::now() > deadline {
            for pid in &pids {
                let _ = node::signal(*pid, Signal::SIGKILL);
            }
            say("nodes did not stop within 60 s: killed");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            let _ = std::fs::remove_file(e.path().join("pid"));
        }
    }
    if !pids.is_empty() {
        say(&format!("stopped (pids {pids:?})"));
    }
    Ok(())
}

fn status(config: &Config) -> anyhow::Result<()> {
    let running = running_pids(&config.dir);
    println!("bootstrap: {}", bootstrap(config));
    println!("version:   Apache Kafka {KAFKA_VERSION} ({})", install::version_dir().display());
    println!("running:   {}", if running.is_empty() { "no".to_string() } else { format!("pids {running:?}") });
    Ok(())
}
