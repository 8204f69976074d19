//! Asking Kafka whether this service can do its job, with an answer an operator can act on.
//!
//! librdkafka reports a refused password or a failed TLS handshake only through its error
//! callback; the request that was waiting merely times out with "broker transport failure".
//! [`Probe`] keeps the last such report and puts it in the error it returns, so a wrong
//! password reads "Kafka refused the credentials of User:receiver" in the log and on `/readyz`
//! instead of a timeout, and a missing ACL names the topic.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::{partition_count, KafkaArgs};

/// Why the brokers last refused this client, as librdkafka reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// SASL: unknown user, wrong password, mechanism not enabled.
    Authentication(String),
    /// TLS: untrusted certificate, host name mismatch, TLS spoken to a plaintext port.
    Tls(String),
}

/// A client context that remembers the last [`Refusal`] (and logs every report at warn, a
/// repeated one every 30 s, so a broker that keeps refusing does not flood the log).
#[derive(Debug, Clone, Default)]
pub struct RefusalWatch {
    last: Arc<Mutex<Option<Refusal>>>,
    /// The reports logged in the last REPEAT_LOG_EVERY (their text without numbers) and when.
    logged: Arc<Mutex<std::collections::HashMap<String, Instant>>>,
}

/// How often a report that keeps coming is logged again.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(30);

impl RefusalWatch {
    pub fn last(&self) -> Option<Refusal> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// A request got through: an earlier refusal no longer explains anything.
    fn forget(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = None;
        }
    }

    fn record(&self, refusal: Refusal) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(refusal);
        }
    }
}

impl ClientContext for RefusalWatch {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // A refused connection is retried every second by librdkafka; the error below is what
        // counts, its log lines are detail.
        tracing::debug!(?level, fac, "librdkafka: {log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication) => self.record(Refusal::Authentication(reason.to_string())),
            Some(RDKafkaErrorCode::SSL) => self.record(Refusal::Tls(reason.to_string())),
            // librdkafka reports a TLS failure it sees on a plain connection as a transport
            // error whose text says SSL.
            Some(RDKafkaErrorCode::BrokerTransportFailure) if reason.contains("SSL") => self.record(Refusal::Tls(reason.to_string())),
            _ => {}
        }
        // librdkafka reports one outage in a few messages whose counts change ("1/1 brokers
        // are down", "0/1 ...", "1 identical error(s) suppressed"), several times a second:
        // each is logged once per REPEAT_LOG_EVERY while it lasts.
        let shape: String = reason.chars().filter(|c| !c.is_ascii_digit()).collect();
        if let Ok(mut logged) = self.logged.lock() {
            logged.retain(|_, at| at.elapsed() < REPEAT_LOG_EVERY);
            if let std::collections::hash_map::Entry::Vacant(entry) = logged.entry(shape) {
                tracing::warn!(%error, "Kafka client: {reason}");
                entry.insert(Instant::now());
            }
        }
    }
}

impl rdkafka::producer::ProducerContext for RefusalWatch {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// A long-lived metadata client: keep one per service (each new client is a new connection
/// and, with SASL, a new authentication).
pub struct Probe {
    /// A producer that never produces: the client kind whose `poll` hands librdkafka's error
    /// reports to the context.
    client: BaseProducer<RefusalWatch>,
    watch: RefusalWatch,
    principal: String,
    mechanism: &'static str,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").field("principal", &self.principal).finish()
    }
}

impl Probe {
    pub fn new(kafka: &KafkaArgs) -> anyhow::Result<Probe> {
        kafka.validate()?;
        let mut config = kafka.client_config();
        kafka.apply_overrides(&mut config);
        let watch = RefusalWatch::default();
        let client = config.create_with_context(watch.clone()).context("cannot create a Kafka client")?;
        Ok(Probe { client, watch, principal: kafka.principal(), mechanism: kafka.sasl_mechanism.as_str() })
    }

    /// Partition count of `topic` (`None`: it does not exist). Blocking. An error says why in
    /// words: credentials refused, TLS failed, the topic's ACL missing, or Kafka unreachable.
    pub fn partitions(&self, topic: &str, timeout: Duration) -> anyhow::Result<Option<i32>> {
        match partition_count(self.client.client(), topic, timeout) {
            Ok(found) => {
                self.watch.forget();
                Ok(found)
            }
            Err(error) if error.is::<super::NotAuthorized>() => Err(error.context(format!("as {}", self.principal))),
            Err(error) => Err(match self.refusal() {
                Some(refusal) => anyhow::anyhow!(self.explain(&refusal)),
                None => error,
            }),
        }
    }

    /// Like [`Probe::partitions`], but a topic not found is asked for again until `settle` has
    /// passed: a topic created a moment ago may not be in every broker's metadata yet (seen on
    /// a three-node cluster under load), and "does not exist" would stop a service for nothing.
    pub fn partitions_settled(&self, topic: &str, timeout: Duration, settle: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = std::time::Instant::now() + settle;
        loop {
            let found = self.partitions(topic, timeout)?;
            if found.is_some() || std::time::Instant::now() >= deadline {
                return Ok(found);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last refusal, after taking librdkafka's pending reports.
    fn refusal(&self) -> Option<Refusal> {
        self.client.poll(Duration::from_millis(100));
        self.watch.last()
    }

    /// What an operator reads for a refusal.
    fn explain(&self, refusal: &Refusal) -> String {
        match refusal {
            Refusal::Authentication(reason) => format!(
                "Kafka refused the credentials of {} ({}): {reason}; check --kafka-sasl-username and the password",
                self.principal, self.mechanism
            ),
            Refusal::Tls(reason) => format!(
                "the TLS connection to Kafka failed: {reason}; check --kafka-ssl-ca-file, the broker's certificate and --kafka-security-protocol"
            ),
        }
    }
}
