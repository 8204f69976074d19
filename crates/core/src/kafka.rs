//! Kafka client configuration shared by the services, and the few admin calls they make.
//!
//! Anything librdkafka understands (security.protocol, SASL, TLS paths, tuning) can be passed
//! through with `--kafka-option key=value`, as Vector's `librdkafka_options` does; it is applied
//! last, so it overrides fleetstream's own settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::secret::Secret;

pub mod probe;
pub use probe::Probe;

/// Connection settings common to every Kafka client of a service: where the brokers are, how
/// to reach them (TLS, SASL) and librdkafka pass-through options.
#[derive(Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// How to reach the brokers: plaintext, ssl (TLS), sasl_plaintext or sasl_ssl (SASL over
    /// TLS, what a production cluster should use).
    #[arg(long = "kafka-security-protocol", env = "KAFKA_SECURITY_PROTOCOL", value_enum, default_value = "plaintext", ignore_case = true)]
    pub security_protocol: SecurityProtocol,

    /// SASL mechanism: SCRAM-SHA-512 (recommended), SCRAM-SHA-256, or PLAIN (for brokers that
    /// only offer it; send it over TLS only).
    #[arg(long = "kafka-sasl-mechanism", env = "KAFKA_SASL_MECHANISM", value_enum, default_value = "SCRAM-SHA-512", ignore_case = true)]
    pub sasl_mechanism: SaslMechanism,

    /// SASL user name: this service's own Kafka principal (docs/security.md lists each one's ACLs).
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// SASL password. Prefer --kafka-sasl-password-file: a value here is visible in the process
    /// list. Never logged or printed.
    #[arg(long = "kafka-sasl-password", env = "KAFKA_SASL_PASSWORD", hide_env_values = true, conflicts_with = "sasl_password_file")]
    pub sasl_password: Option<Secret>,

    /// File holding the SASL password (read once at start; one trailing newline is ignored), as
    /// Docker and Kubernetes secrets are mounted.
    #[arg(long = "kafka-sasl-password-file", env = "KAFKA_SASL_PASSWORD_FILE", value_parser = read_secret_file)]
    pub sasl_password_file: Option<Secret>,

    /// PEM file of the CA that signed the brokers' certificates (ssl, sasl_ssl). Without it the
    /// system's trust store is used. Broker host names are verified against the certificates.
    #[arg(long = "kafka-ssl-ca-file", env = "KAFKA_SSL_CA_FILE")]
    pub ssl_ca_file: Option<PathBuf>,

    /// Extra librdkafka settings, KEY=VALUE, repeatable (in the env var separated by `;`), e.g.
    /// `ssl.certificate.location=/etc/kafka/client.pem`. Applied last: overrides ours.
    #[arg(long = "kafka-option", env = "KAFKA_OPTIONS", value_delimiter = ';', value_parser = parse_key_value, hide_env_values = true)]
    pub options: Vec<(String, String)>,
}

/// `security.protocol` of librdkafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    #[value(name = "plaintext")]
    Plaintext,
    #[value(name = "ssl")]
    Ssl,
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// `sasl.mechanism` of librdkafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

fn read_secret_file(path: &str) -> Result<Secret, String> {
    Secret::from_file(Path::new(path)).map_err(|e| e.to_string())
}

/// Shows the settings as the start-up log does: secrets masked.
impl std::fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaArgs").field("brokers", &self.brokers).field("settings", &self.redacted_options()).finish()
    }
}

/// Producer tuning for services that write to Kafka.
#[derive(Debug, Clone, clap::Args)]
pub struct ProducerArgs {
    /// How long the producer waits to batch records before sending (librdkafka linger.ms).
    #[arg(long = "kafka-linger-ms", env = "KAFKA_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u32,

    /// Compression of record batches: none, gzip, snappy, lz4 or zstd.
    #[arg(long = "kafka-compression", env = "KAFKA_COMPRESSION", default_value = "lz4")]
    pub compression: String,

    /// How long a record may take to be acknowledged (librdkafka message.timeout.ms, includes
    /// its internal retries) before delivery counts as failed.
    #[arg(long = "kafka-delivery-timeout", env = "KAFKA_DELIVERY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub delivery_timeout: Duration,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("`{s}` has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Names of the options whose values must never be logged.
fn is_secret(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.contains("sasl.jaas") || key.ends_with(".pem") || key.contains("token")
}

impl KafkaArgs {
    /// Plaintext to `brokers`, no pass-through options (what a test on a local broker needs).
    pub fn plaintext(brokers: impl Into<String>) -> KafkaArgs {
        KafkaArgs {
            brokers: brokers.into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: SaslMechanism::ScramSha512,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            ssl_ca_file: None,
            options: Vec::new(),
        }
    }

    /// A client config with the brokers and the security settings (TLS, SASL); the
    /// pass-through options are applied by [`KafkaArgs::apply_overrides`], last.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("security.protocol", self.security_protocol.as_str());
        if self.security_protocol.uses_sasl() {
            config.set("sasl.mechanism", self.sasl_mechanism.as_str());
            if let Some(user) = &self.sasl_username {
                config.set("sasl.username", user);
            }
            if let Some(password) = self.password() {
                config.set("sasl.password", password.expose());
            }
        }
        if let (true, Some(ca)) = (self.security_protocol.uses_tls(), &self.ssl_ca_file) {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        config
    }

    /// The SASL password, from the flag or the file.
    fn password(&self) -> Option<&Secret> {
        self.sasl_password.as_ref().or(self.sasl_password_file.as_ref())
    }

    /// What is missing for the chosen security protocol, as a message naming the flags.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.security_protocol.uses_sasl() {
            if self.sasl_username.as_deref().unwrap_or("").is_empty() {
                bail!("--kafka-security-protocol {} needs --kafka-sasl-username (KAFKA_SASL_USERNAME)", self.security_protocol.as_str());
            }
            if self.password().is_none_or(Secret::is_empty) {
                bail!(
                    "--kafka-security-protocol {} needs --kafka-sasl-password-file (KAFKA_SASL_PASSWORD_FILE) or --kafka-sasl-password",
                    self.security_protocol.as_str()
                );
            }
        }
        if let Some(ca) = &self.ssl_ca_file {
            if !ca.is_file() {
                bail!("--kafka-ssl-ca-file {}: no such file", ca.display());
            }
        }
        Ok(())
    }

    /// Who this service is to Kafka, for messages: `User:<name>` or ANONYMOUS.
    pub fn principal(&self) -> String {
        match (&self.sasl_username, self.security_protocol.uses_sasl()) {
            (Some(user), true) => format!("User:{user}"),
            _ => "User:ANONYMOUS".to_string(),
        }
    }

    /// Applies the pass-through options; call after setting the service's own.
    pub fn apply_overrides(&self, config: &mut ClientConfig) {
        for (k, v) in &self.options {
            config.set(k, v);
        }
    }

    /// The security settings and the pass-through options with secret values masked, for
    /// start-up logs.
    pub fn redacted_options(&self) -> Vec<String> {
        let mut shown = vec![format!("security.protocol={}", self.security_protocol.as_str())];
        if self.security_protocol.uses_sasl() {
            shown.push(format!("sasl.mechanism={}", self.sasl_mechanism.as_str()));
            shown.push(format!("sasl.username={}", self.sasl_username.as_deref().unwrap_or("")));
            shown.push(format!("sasl.password={}", if self.password().is_some() { "***" } else { "(none)" }));
        }
        if let Some(ca) = &self.ssl_ca_file {
            shown.push(format!("ssl.ca.location={}", ca.display()));
        }
        shown.extend(
            self.options
                .iter()
                .map(|(k, v)| if is_secret(k) { format!("{k}=***") } else { format!("{k}={v}") }),
        );
        shown
    }

    /// An idempotent, acks=all producer config: a record is acknowledged only when every
    /// in-sync replica has it, and librdkafka's internal retries never reorder or duplicate.
    pub fn producer_config(&self, tuning: &ProducerArgs) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", tuning.linger_ms.to_string())
            .set("compression.type", &tuning.compression)
            .set("message.timeout.ms", tuning.delivery_timeout.as_millis().to_string());
        self.apply_overrides(&mut config);
        config
    }

    /// A consumer-group member that commits by hand: offsets are stored and committed only
    /// when the service says its outputs are durable, and a new group starts from the earliest
    /// record (nothing is skipped). Cooperative rebalancing moves only the partitions that
    /// change owner. Overrides apply last.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        // No auto commit or offset store, from the earliest record, read committed: what a
        // transaction wrote is read once it commits, never if it aborts.
        let mut config = self.reader_config(group_id);
        config
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Kafka answers a fetch as soon as it has data (fetch.min.bytes 1); this bounds how
            // long a fetch that finds none is held (librdkafka's default: 500 ms), which a seek
            // or a new assignment otherwise waits behind. Not less: every empty fetch costs the
            // broker a request, and at 10 ms an idle processor alone kept a quarter of a core of
            // the benchmark machine's broker busy (docs/benchmarks.md).
            .set("fetch.wait.max.ms", "100")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
        self.apply_overrides(&mut config);
        config
    }

    /// A consumer used only with `assign` (reading a partition or a whole topic, never joining
    /// a group, never committing: librdkafka only wants a `group_id` set), from the earliest
    /// record, seeing only what transactions committed. Callers add their own settings, then
    /// [`KafkaArgs::apply_overrides`].
    pub fn reader_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed");
        config
    }

    /// An admin client, for creating topics and reading metadata.
    pub fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        let mut config = self.client_config();
        self.apply_overrides(&mut config);
        config.create().context("cannot create Kafka admin client")
    }
}

/// A topic a service needs, with its configuration.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec { name: name.into(), partitions, configs: Vec::new() }
    }

    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.configs.push((key.to_string(), value.to_string()));
        self
    }

    /// Every `(key, value)` of `configs` (e.g. [`crate::topics::LATEST_CONFIGS`]).
    pub fn configs(self, configs: &[(&str, &str)]) -> Self {
        configs.iter().fold(self, |spec, (k, v)| spec.config(k, v))
    }
}

/// Creates the topics that do not exist yet. Existing ones are left as they are.
pub async fn ensure_topics(admin: &AdminClient<DefaultClientContext>, specs: &[TopicSpec]) -> anyhow::Result<()> {
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.configs.iter().fold(
                NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(-1)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new, &options).await.context("create topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            // A principal without the Create ACL (the least-privilege set-up) is refused even
            // for a topic that exists; that one is fine, a missing one is the operator's to make.
            Err((topic, code @ (RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::ClusterAuthorizationFailed))) => {
                let exists = partition_count(admin.inner(), &topic, Duration::from_secs(10))?.is_some();
                if !exists {
                    bail!("not allowed to create topic {topic} ({code}): create it with an admin principal (scripts/kafka-access)");
                }
            }
            Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Partition count of a topic, or `None` if it does not exist. A topic the principal may not
/// see is an error naming the topic, not a missing topic: Kafka answers
/// TOPIC_AUTHORIZATION_FAILED when an ACL is missing, and "does not exist" would send the
/// operator looking in the wrong place.
pub fn partition_count<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<i32>> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read metadata of topic {topic}"))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
    match found.error().map(RDKafkaErrorCode::from) {
        None => Ok(Some(found.partitions().len() as i32).filter(|n| *n > 0)),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => Err(NotAuthorized { topic: topic.to_string() }.into()),
        Some(_) => Ok(None),
    }
}

/// Kafka refused this principal access to a topic: an ACL is missing.
#[derive(Debug, thiserror::Error)]
#[error("Kafka denies access to topic `{topic}` (TOPIC_AUTHORIZATION_FAILED): the principal lacks an ACL on it (docs/security.md lists what each service needs)")]
pub struct NotAuthorized {
    pub topic: String,
}

/// Where a topic read whole from its beginning (a compacted table such as `geofences`) ended
/// when the reading started: once every partition has been read past its end, the reader holds
/// everything that existed then.
#[derive(Debug, Clone, Default)]
pub struct CatchUp(std::collections::HashMap<i32, i64>);

impl CatchUp {
    /// A record at `offset` of `partition` was read.
    pub fn read(&mut self, partition: i32, offset: i64) {
        if self.0.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            self.0.remove(&partition);
        }
    }

    /// The end of `partition` was reached (a partition EOF).
    pub fn reached_end(&mut self, partition: i32) {
        self.0.remove(&partition);
    }

    pub fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// Assigns every partition of `topic` to `consumer` from its beginning (no group: nothing is
/// committed) and returns where each partition ends now. Blocking: metadata and watermarks.
pub fn assign_whole<C: rdkafka::consumer::ConsumerContext, K: rdkafka::consumer::Consumer<C>>(
    consumer: &K,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<CatchUp> {
    let partitions = partition_count(consumer.client(), topic, timeout)?.with_context(|| format!("topic {topic} does not exist (yet)"))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            ends.insert(p, high);
        }
    }
    consumer.assign(&tpl)?;
    Ok(CatchUp(ends))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    #[test]
    fn a_catch_up_is_done_when_every_partition_was_read_to_its_end() {
        let mut c = CatchUp([(0, 10), (2, 3)].into_iter().collect());
        c.read(0, 8);
        c.reached_end(1);
        assert!(!c.done());
        c.read(0, 9);
        c.read(2, 2);
        assert!(c.done());
        assert!(CatchUp::default().done(), "an empty topic is read at once");
    }

    #[test]
    fn options_pass_through_and_secrets_are_masked() {
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-option",
            "security.protocol=SASL_SSL;sasl.password=hunter2",
            "--kafka-option",
            "linger.ms=50",
        ]);
        let cli = match cli {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let producer = cli.kafka.producer_config(&ProducerArgs {
            linger_ms: 5,
            compression: "lz4".into(),
            delivery_timeout: Duration::from_secs(30),
        });
        assert_eq!(producer.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(producer.get("linger.ms"), Some("50"), "overrides win");
        assert_eq!(producer.get("acks"), Some("all"));
        let shown = cli.kafka.redacted_options().join(" ");
        assert!(shown.contains("sasl.password=***") && !shown.contains("hunter2"), "{shown}");
        assert!(Cli::try_parse_from(["x", "--kafka-option", "novalue"]).is_err());
    }
}
