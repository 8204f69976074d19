//! Kafka transactions on Apache Kafka, the zombie case: a processor frozen (SIGSTOP) past its
//! session timeout while another takes its partitions over, then thawed (SIGCONT). Whatever
//! batch it had in hand must not reach `positions`: read_committed readers see every position
//! exactly once.

use std::time::{Duration, Instant};

use fleetstream_testkit::Signal;

use crate::helpers::*;
use crate::workload::{assert_accounted, assert_events_once, stream_positions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_processor_is_fenced_when_it_wakes_up() {
    let (broker, topics) = broker_and_topics(3).await;
    let group = fleetstream_testkit::unique("zombie");
    // The successor's state restore waits until the zombie's open transaction is aborted, at
    // its transaction timeout: 10 s here, to keep the test short.
    let timeout = [("PROCESSOR_TRANSACTION_TIMEOUT", "10s")];
    let zombie = ProcessorProcess::start_with(&broker, &topics, &group, "a", "transactions", &timeout);
    let mut successor: Option<ProcessorProcess> = None;
    // 5,400 positions at 150/s: about 36 s, long enough to freeze, take over (session timeout,
    // then the restore's wait for the zombie's transaction) and thaw in.
    let produce = stream_positions(&broker, &topics, 9, 600, 150);
    tokio::pin!(produce);
    let (mut frozen_at, mut thawed_after) = (None::<Instant>, None::<Duration>);
    let produced = loop {
        tokio::select! {
            p = &mut produce => break p,
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                match (&successor, frozen_at, thawed_after) {
                    (None, _, _) if zombie.metric("fleetstream_processor_positions_valid_total").await > 0.0 => {
                        zombie.signal(Signal::SIGSTOP);
                        frozen_at = Some(Instant::now());
                        successor = Some(ProcessorProcess::start_with(&broker, &topics, &group, "b", "transactions", &timeout));
                    }
                    (Some(s), Some(at), None) if s.metric("fleetstream_processor_assigned_partitions").await == 3.0 => {
                        zombie.signal(Signal::SIGCONT);
                        thawed_after = Some(at.elapsed());
                    }
                    _ => {}
                }
            }
        }
    };
    let frozen_for = thawed_after.expect("the successor took every partition over while the first processor was frozen");
    // Evicted by the 10 s session timeout, counted from its last heartbeat (1 s interval).
    assert!(frozen_for > Duration::from_secs(8), "frozen until the session timed out, was {frozen_for:?}");
    assert_accounted(&broker, &topics, &produced);
    assert_events_once(&broker, &topics, &produced);
    let successor = successor.expect("a successor was started");
    assert!(successor.metric("fleetstream_processor_positions_valid_total").await > 0.0, "the successor processed positions");
}
