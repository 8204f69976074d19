//! The processor's spans of traced positions: one per traced record of a batch, from the poll
//! that fetched it to the commit that made its outputs visible (or the rewind that undid them).
//!
//! A record is traced when it carries a sampled `traceparent` (the receiver decided), or, when
//! it has none, if `--trace-sample-ratio` picks it here (a root span). The
//! spans are built from the batch's own clock readings, after the fact, so the records that are
//! not traced cost one header lookup. The outputs written on a traced record's behalf
//! (`positions`, the DLQ) carry the processor span's `traceparent` for the tracker to continue;
//! a processor with tracing off passes the receiver's on unchanged, so the trace stays whole.

use std::time::SystemTime;

use rdkafka::message::{Message, OwnedMessage};

use fleetstream_core::otel::{PositionSpan, Tracing};
use fleetstream_core::publish::headers;

/// When the batch was polled and judged (wall clock): read only while tracing is on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchClock {
    pub polled: SystemTime,
    pub judged: SystemTime,
}

/// The spans of one batch's traced records.
#[derive(Debug, Default)]
pub(crate) struct BatchSpans {
    spans: Vec<PositionSpan>,
}

impl BatchSpans {
    /// Starts the span of `record` if it is traced (or, without a trace, if it is sampled
    /// here: `--trace-sample-ratio`), with its verdict; returns the `traceparent` its outputs
    /// carry.
    pub(crate) fn follow(&mut self, tracing: &Tracing, clock: Option<BatchClock>, record: &OwnedMessage, verdict: &str) -> Option<String> {
        let incoming = headers::text(record.headers(), headers::TRACEPARENT);
        let Some(clock) = clock else {
            return incoming.map(str::to_string);
        };
        let mut span = match incoming {
            Some(parent) => tracing.child("process position", Some(parent), clock.polled)?,
            None => tracing.root("process position", || clock.polled)?,
        };
        span.attribute("messaging.source.partition.id", record.partition().to_string());
        span.attribute("messaging.kafka.offset", record.offset());
        span.attribute("fleetstream.verdict", verdict.to_string());
        span.event_at("judged", clock.judged);
        let traceparent = span.traceparent();
        self.spans.push(span);
        Some(traceparent)
    }

    /// Every output of the batch is acknowledged by Kafka (not yet visible in a transaction).
    pub(crate) fn written(&mut self) {
        let now = SystemTime::now();
        for span in &mut self.spans {
            span.event_at("written", now);
        }
    }

    /// The batch is committed: its outputs are visible to read_committed consumers.
    pub(crate) fn committed(self) {
        let now = SystemTime::now();
        for mut span in self.spans {
            span.event_at("committed", now);
            span.end_at(now);
        }
    }

    /// The batch failed and will be fetched again: these spans end failed, the retry makes new ones.
    pub(crate) fn failed(self, why: &str) {
        for mut span in self.spans {
            span.fail(format!("batch not committed, rewound for another try: {why}"));
            span.end();
        }
    }
}
