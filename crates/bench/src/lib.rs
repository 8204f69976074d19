//! Benchmark tools for `make bench` (scripts/bench drives them; docs/benchmarks.md is their
//! output). Not part of the product: nothing here is used by a service.

pub mod otlp;
pub mod report;

use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::message::ToBytes;
use rdkafka::ClientContext;

/// A producer context that counts deliveries: the floors must lose nothing either.
#[derive(Debug, Default)]
pub struct Counting {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

impl Counting {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Hands a record to the producer, waiting while its queue is full (a benchmark pushes as fast
/// as librdkafka takes them).
pub fn send_waiting<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(producer: &ThreadedProducer<Counting>, mut record: BaseRecord<'_, K, P>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
    }
}

impl ClientContext for Counting {}
impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The same position payload the simulator's load mode sends: a slow zig-zag of about a metre
/// per position, plausible for the processor at any rate.
pub fn position_json(obu_id: u64, seq: u64, ts: i64, base: (f64, f64)) -> String {
    let step = (seq % 200).abs_diff(100) as f64 * 0.00001;
    format!(
        r#"{{"obu_id":{obu_id},"seq":{seq},"ts":{ts},"lat":{:.7},"lon":{:.7},"speed":30.0,"heading":45.0}}"#,
        base.0 + step,
        base.1 + step
    )
}

/// A deterministic base point in Berlin for a vehicle.
pub fn base_point(obu_id: u64) -> (f64, f64) {
    let h = obu_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (52.40 + (h % 10_000) as f64 / 50_000.0, 13.20 + ((h >> 20) % 10_000) as f64 / 25_000.0)
}

/// Percentiles of a latency histogram in milliseconds.
pub fn percentiles_ms(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    serde_json::json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
        "count": h.len(),
    })
}
