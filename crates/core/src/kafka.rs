//! Kafka client configuration shared by the services, and the few admin calls they make.
//!
//! Anything librdkafka understands (security.protocol, SASL, TLS paths, tuning) can be passed
//! through with `--kafka-option key=value`, as Vector's `librdkafka_options` does; it is applied
//! last, so it overrides fleetstream's own settings.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

/// Connection settings common to every Kafka client of a service.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Extra librdkafka settings, KEY=VALUE, repeatable (in the env var separated by `;`), e.g.
    /// `security.protocol=SASL_SSL;sasl.mechanism=SCRAM-SHA-512`. Applied last: overrides ours.
    #[arg(long = "kafka-option", env = "KAFKA_OPTIONS", value_delimiter = ';', value_parser = parse_key_value)]
    pub options: Vec<(String, String)>,
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
    /// A client config with the brokers and the pass-through options.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// Applies the pass-through options; call after setting the service's own.
    pub fn apply_overrides(&self, config: &mut ClientConfig) {
        for (k, v) in &self.options {
            config.set(k, v);
        }
    }

    /// The pass-through options with secret values masked, for start-up logs.
    pub fn redacted_options(&self) -> Vec<String> {
        self.options
            .iter()
            .map(|(k, v)| if is_secret(k) { format!("{k}=***") } else { format!("{k}={v}") })
            .collect()
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
            // or a new assignment otherwise waits behind.
            .set("fetch.wait.max.ms", "10")
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
            Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Partition count of a topic, or `None` if it does not exist.
pub fn partition_count<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<i32>> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read metadata of topic {topic}"))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0))
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
