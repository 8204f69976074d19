//! The pipeline's topics, created on a local broker.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use fleetstream_core::kafka::{ensure_topics, TopicSpec};

/// Names of the pipeline's topics.
#[derive(Debug, Clone, clap::Args)]
pub struct TopicNames {
    /// Raw positions (written by the receiver).
    #[arg(long = "topic-raw", env = "TOPIC_RAW", default_value = fleetstream_core::topics::RAW)]
    pub raw: String,
    /// Validated positions.
    #[arg(long = "topic-positions", env = "TOPIC_POSITIONS", default_value = fleetstream_core::topics::POSITIONS)]
    pub positions: String,
    /// Latest position per vehicle (compacted).
    #[arg(long = "topic-latest", env = "TOPIC_LATEST", default_value = fleetstream_core::topics::LATEST)]
    pub latest: String,
    /// Dead letters.
    #[arg(long = "topic-dlq", env = "TOPIC_DLQ", default_value = fleetstream_core::topics::DLQ)]
    pub dlq: String,
    /// Fleet events.
    #[arg(long = "topic-events", env = "TOPIC_EVENTS", default_value = fleetstream_core::topics::EVENTS)]
    pub events: String,
    /// Geofences (compacted, one partition).
    #[arg(long = "topic-geofences", env = "TOPIC_GEOFENCES", default_value = fleetstream_core::topics::GEOFENCES)]
    pub geofences: String,
}

impl TopicNames {
    /// The topics with `partitions` partitions each (the geofences one: few records, read whole
    /// by every processor); replication is the broker default (3 on a cluster, 1 on a single
    /// node).
    pub fn specs(&self, partitions: i32) -> Vec<TopicSpec> {
        vec![
            TopicSpec::new(&self.raw, partitions),
            TopicSpec::new(&self.positions, partitions),
            TopicSpec::new(&self.latest, partitions).configs(fleetstream_core::topics::LATEST_CONFIGS),
            TopicSpec::new(&self.dlq, partitions),
            TopicSpec::new(&self.events, partitions),
            TopicSpec::new(&self.geofences, 1).config("cleanup.policy", "compact"),
        ]
    }
}

/// Creates the topics that do not exist yet, as the client `admin` configures (a cluster's
/// [`crate::Cluster::admin_config`]).
pub async fn create(admin: &ClientConfig, specs: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = admin
        .clone()
        .set("socket.timeout.ms", Duration::from_secs(10).as_millis().to_string())
        .create()
        .context("cannot create a Kafka admin client")?;
    ensure_topics(&admin, specs).await
}
