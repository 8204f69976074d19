//! Exactly-once under failure, in both modes: kill -9 mid-stream, scale-out and SIGTERM.

use std::time::Duration;

use fleetstream_testkit::Signal;

use crate::helpers::*;
use crate::workload::{assert_accounted, assert_events_once, stream_positions};

/// Streams 2,400 positions while the processor is killed with SIGKILL three times; each time a
/// new one (same instance, so the same transactional id) takes over.
async fn kill_9_three_times_mid_stream(mode: &str) {
    let (broker, topics) = broker_and_topics(3).await;
    let group = fleetstream_testkit::unique("crash");
    let mut processor = ProcessorProcess::start(&broker, &topics, &group, "0", mode);
    let produce = stream_positions(&broker, &topics, 12, 200, 600);
    tokio::pin!(produce);
    let mut kills = 0;
    let produced = loop {
        tokio::select! {
            p = &mut produce => break p,
            () = tokio::time::sleep(Duration::from_millis(1300)) => {
                if kills < 3 {
                    processor.kill();
                    kills += 1;
                    processor = ProcessorProcess::start(&broker, &topics, &group, "0", mode);
                }
            }
        }
    };
    assert_eq!(kills, 3, "the processor was killed three times mid-stream");
    assert_accounted(&broker, &topics, &produced);
    // Without transactions an event may be written again after a crash, with the same id.
    if mode == "transactions" {
        assert_events_once(&broker, &topics, &produced);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_and_repeats_nothing_with_transactions() {
    kill_9_three_times_mid_stream("transactions").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_and_repeats_nothing_with_state_rebuild() {
    kill_9_three_times_mid_stream("rebuild").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_share_the_work_and_sigterm_loses_nothing() {
    let (broker, topics) = broker_and_topics(6).await;
    let group = fleetstream_testkit::unique("scale");
    let mut first = ProcessorProcess::start(&broker, &topics, &group, "a", "transactions");
    let second = ProcessorProcess::start(&broker, &topics, &group, "b", "transactions");
    let produce = stream_positions(&broker, &topics, 12, 150, 600);
    tokio::pin!(produce);
    let mut stopped = None;
    let produced = loop {
        tokio::select! {
            p = &mut produce => break p,
            // Once both share the partitions (and 2 s in), the first is stopped.
            () = tokio::time::sleep(Duration::from_millis(2000)), if stopped.is_none() => {
                if first.metric("fleetstream_processor_assigned_partitions").await > 0.0 {
                    first.signal(Signal::SIGTERM);
                    stopped = Some(first.exit_code(Duration::from_secs(40)).await);
                }
            }
        }
    };
    assert_eq!(stopped, Some(Some(0)), "SIGTERM mid-stream (after the first had partitions): graceful exit with status 0");
    assert_accounted(&broker, &topics, &produced);
    assert_events_once(&broker, &topics, &produced);
    assert_eq!(second.metric("fleetstream_processor_assigned_partitions").await, 6.0, "the second took every partition over");
}
