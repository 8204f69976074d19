//! Rebalance callbacks. librdkafka calls them inside `poll`, i.e. only between batches; they
//! record what happened and the loop acts on it before its next batch.

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

use crate::metrics::Metrics;

/// A change of this member's assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// The events not yet acted on, shared by the callbacks and the loop.
#[derive(Debug, Clone, Default)]
pub(crate) struct Events(Arc<Mutex<Vec<RebalanceEvent>>>);

impl Events {
    fn push(&self, event: RebalanceEvent) {
        if let Ok(mut e) = self.0.lock() {
            e.push(event);
        }
    }

    /// The events so far, oldest first; empties the list.
    pub(crate) fn take(&self) -> Vec<RebalanceEvent> {
        self.0.lock().map(|mut e| e.drain(..).collect()).unwrap_or_default()
    }

    pub(crate) fn pending(&self) -> bool {
        self.0.lock().map(|e| !e.is_empty()).unwrap_or(false)
    }
}

/// The consumer's context: counts rebalances and records them as [`Events`].
pub(crate) struct Context {
    events: Events,
    metrics: Metrics,
}

impl Context {
    pub(crate) fn new(events: Events, metrics: Metrics) -> Self {
        Context { events, metrics }
    }
}

fn partitions(tpl: &rdkafka::TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked = partitions(tpl);
            tracing::info!(partitions = ?revoked, "partitions revoked");
            self.metrics.rebalances.with_label_values(&["revoke"]).inc();
            self.events.push(RebalanceEvent::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = partitions(tpl);
                tracing::info!(partitions = ?assigned, "partitions assigned");
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                self.events.push(RebalanceEvent::Assigned(assigned));
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}
