//! Failover drills on a three-broker Apache Kafka cluster (replication factor 3,
//! min.insync.replicas 2). In each, a simulated fleet streams through the receiver, the
//! processor (Kafka transactions) and the tracker at a steady rate while brokers fail, and the
//! run ends with an exact accounting: every acked `(obu_id, seq)` is in `positions` exactly once
//! (or in the DLQ with a reason), nothing is missing, nothing is there twice.
//!
//! The drills share one cluster (it is whole again after each) and run one at a time. Each
//! prints its report line and appends it to `target/tmp/drills.txt`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fleetstream_core::dlq;
use fleetstream_testkit::{eventually, http_get, metric_value, Broker, Dedicated, Running, Topics};

use crate::parse;

/// The drills' cluster, started by the first drill; one drill at a time holds it.
async fn cluster() -> tokio::sync::MutexGuard<'static, Dedicated> {
    static CLUSTER: OnceLock<tokio::sync::Mutex<Dedicated>> = OnceLock::new();
    let cluster = tokio::task::block_in_place(|| {
        CLUSTER.get_or_init(|| tokio::sync::Mutex::new(Dedicated::start(3).expect("a three-node Apache Kafka cluster starts")))
    });
    let mut guard = cluster.lock().await;
    // A drill that failed half-way may have left nodes down: the next one starts whole.
    tokio::task::block_in_place(|| {
        if !guard.all_running() {
            guard.restart_all().expect("the cluster's nodes restart");
        }
        guard.wait_fully_replicated(Duration::from_secs(120)).expect("the cluster is whole before a drill");
    });
    guard
}

/// The services of one drill, each with its own topics and groups.
struct Pipeline {
    topics: Topics,
    receiver: Running,
    receiver_port: u16,
    processor: Running,
    tracker: Running,
    tracker_store: fleetstream_tracker::Store,
    /// For the monitor: the receiver's and the processor's metrics.
    registries: (prometheus::Registry, prometheus::Registry),
    _db: tempdir::Dir,
}

mod tempdir {
    /// A directory deleted on drop.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            let dir = std::env::temp_dir().join(fleetstream_testkit::unique("fleetstream-drill-db"));
            std::fs::create_dir_all(&dir).expect("a temp dir");
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn start_pipeline(broker: &Broker) -> Pipeline {
    fleetstream_testkit::init_test_logs();
    let topics = broker.topics(6).await.expect("topics are created");
    let (receiver, receiver_port, receiver_registry) = crate::receiver(broker, &topics, &[]).await;
    let group = fleetstream_testkit::unique("drill");
    let (processor, processor_registry) = crate::processor(broker, &topics, &group, &[]).await;
    let b = broker.brokers();

    let db = tempdir::Dir::new();
    let tracker: fleetstream_tracker::Config = parse(vec![
        "tracker".into(),
        "--listen=127.0.0.1:0".into(),
        format!("--kafka-brokers={b}"),
        format!("--database-url=sqlite://{}/tracker.db", db.0.display()),
        format!("--group-id={}", fleetstream_testkit::unique("drill-tracker")),
        format!("--positions-topic={}", topics.positions),
        format!("--latest-topic={}", topics.latest),
        format!("--events-topic={}", topics.events),
        format!("--geofences-topic={}", topics.geofences),
        // Its API is not asked here; it needs a token to start.
        format!("--api-tokens={} admin", fleetstream_testkit::unique("drill-admin")),
    ]);
    let tracker = fleetstream_tracker::Application::build(tracker).await.expect("the tracker starts");
    let tracker_store = tracker.store();
    let tracker = Running::spawn(tracker.metrics().registry, |stop| tracker.run_until_stopped(stop));
    Pipeline {
        topics,
        receiver,
        receiver_port,
        processor,
        tracker,
        tracker_store,
        registries: (receiver_registry, processor_registry),
        _db: db,
    }
}

/// What the monitor saw, sampled every 100 ms.
#[derive(Debug, Default)]
struct Timeline {
    /// (seconds since the drill started, receiver acks, processor commits, receiver ready)
    samples: Vec<(f64, f64, f64, bool)>,
}

impl Timeline {
    /// Longest time one counter (1: acks, 2: commits) did not move, in seconds.
    fn longest_pause(&self, counter: usize) -> f64 {
        let value = |s: &(f64, f64, f64, bool)| if counter == 1 { s.1 } else { s.2 };
        let mut longest = 0.0f64;
        let mut since = self.samples.first().map(|s| s.0).unwrap_or(0.0);
        for w in self.samples.windows(2) {
            if value(&w[1]) > value(&w[0]) {
                longest = longest.max(w[1].0 - since);
                since = w[1].0;
            }
        }
        longest
    }

    /// Seconds from `t` until the counter moved again.
    fn resumed_after(&self, counter: usize, t: f64) -> Option<f64> {
        let value = |s: &(f64, f64, f64, bool)| if counter == 1 { s.1 } else { s.2 };
        let base = self.samples.iter().rev().find(|s| s.0 <= t).map(value)?;
        self.samples.iter().find(|s| s.0 > t && value(s) > base).map(|s| s.0 - t)
    }

    /// Acks counted between `from` and `to` (seconds).
    fn acks_between(&self, from: f64, to: f64) -> f64 {
        let at = |t: f64| self.samples.iter().rev().find(|s| s.0 <= t).map(|s| s.1).unwrap_or(0.0);
        at(to) - at(from)
    }

    fn unready_between(&self, from: f64, to: f64) -> bool {
        self.samples.iter().any(|s| s.0 >= from && s.0 <= to && !s.3)
    }
}

fn monitor(pipeline: &Pipeline, started: Instant) -> (Arc<Mutex<Timeline>>, tokio::task::JoinHandle<()>) {
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let (receiver, processor) = pipeline.registries.clone();
    let port = pipeline.receiver_port;
    let t = timeline.clone();
    let task = tokio::spawn(async move {
        loop {
            let acks = metric_value(&fleetstream_core::telemetry::render(&receiver), "fleetstream_receiver_positions_acked_total", None);
            let commits = metric_value(&fleetstream_core::telemetry::render(&processor), "fleetstream_processor_commits_total", None);
            let ready = matches!(http_get(&format!("http://127.0.0.1:{port}/readyz")).await, Ok((200, _)));
            if let Ok(mut t) = t.lock() {
                t.samples.push((started.elapsed().as_secs_f64(), acks, commits, ready));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (timeline, task)
}

/// The simulated fleet: 40 vehicles reporting every 250 ms (160 positions/s), for `duration`.
fn fleet(port: u16, duration: Duration) -> tokio::task::JoinHandle<fleetstream_obu_sim::Summary> {
    let config: fleetstream_obu_sim::Config = parse(vec![
        "obu-sim".into(),
        format!("--url=ws://127.0.0.1:{port}/ws"),
        "--vehicles=40".into(),
        "--connections=8".into(),
        "--interval=250ms".into(),
        "--jitter=20ms".into(),
        format!("--duration={}ms", duration.as_millis()),
        "--drain-timeout=90s".into(),
        "--quiet".into(),
    ]);
    tokio::spawn(async move { fleetstream_obu_sim::run(config, std::future::pending()).await.expect("the simulator runs") })
}

/// What became of the fleet's positions.
#[derive(Debug)]
struct Accounting {
    generated: u64,
    sent: u64,
    acked: u64,
    /// Acked, not in `positions`: (obu_id, seq, the DLQ reason if it is there).
    lost: Vec<(u64, u64, Option<String>)>,
    duplicated: Vec<(u64, u64)>,
    /// Distinct positions in `positions`.
    in_positions: u64,
    dead_lettered: BTreeMap<String, u64>,
    /// Fleet events in `events`, by type.
    events: BTreeMap<String, u64>,
    /// Event ids found more than once.
    duplicated_events: Vec<String>,
    /// Vehicles whose events are not in seq order, or that were not `online` exactly once.
    wrong_events: Vec<String>,
}

/// Reads `positions` and the DLQ as a read_committed consumer and checks every acked position.
async fn account(broker: &Broker, pipeline: &Pipeline, summary: &fleetstream_obu_sim::Summary) -> Accounting {
    let acked: u64 = summary.acked_by_vehicle.values().map(|a| a.len()).sum();
    let positions = broker.read(&pipeline.topics.positions, acked as usize, Duration::from_secs(3), Duration::from_secs(120)).expect("positions are readable");
    let mut count: HashMap<(u64, u64), u32> = HashMap::new();
    for r in &positions {
        let v = r.json();
        let id = (v["obu_id"].as_u64().expect("obu_id"), v["seq"].as_u64().expect("seq"));
        *count.entry(id).or_default() += 1;
    }
    let dead = broker.read(&pipeline.topics.dlq, 0, Duration::from_secs(2), Duration::from_secs(10)).expect("the DLQ is readable");
    let mut dead_ids: HashMap<(u64, u64), String> = HashMap::new();
    let mut dead_lettered: BTreeMap<String, u64> = BTreeMap::new();
    for r in &dead {
        let reason = r.header(dlq::REASON).unwrap_or("<no reason>").to_string();
        *dead_lettered.entry(reason.clone()).or_default() += 1;
        let v = r.json();
        if let (Some(o), Some(s)) = (v["obu_id"].as_u64(), v["seq"].as_u64()) {
            dead_ids.insert((o, s), reason);
        }
    }
    // The fleet sends only valid positions: every acked one belongs in `positions`. One that is
    // only in the DLQ is lost to the user too.
    let mut lost = Vec::new();
    for (obu, seqs) in &summary.acked_by_vehicle {
        for seq in seqs.iter() {
            if !count.contains_key(&(*obu, seq)) {
                lost.push((*obu, seq, dead_ids.get(&(*obu, seq)).cloned()));
            }
        }
    }
    let mut duplicated: Vec<(u64, u64)> = count.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
    duplicated.sort_unstable();
    let in_positions = count.len() as u64;
    let (events, duplicated_events, wrong_events) = account_events(broker, pipeline, summary);
    Accounting { generated: summary.generated, sent: summary.sent, acked, lost, duplicated, in_positions, dead_lettered, events, duplicated_events, wrong_events }
}

/// Reads `events` (read_committed): every event id once; per vehicle in seq order, and one
/// `online` (the drill is shorter than the offline timeout).
fn account_events(broker: &Broker, pipeline: &Pipeline, summary: &fleetstream_obu_sim::Summary) -> (BTreeMap<String, u64>, Vec<String>, Vec<String>) {
    let vehicles = summary.acked_by_vehicle.len();
    let mut records = broker.read(&pipeline.topics.events, vehicles, Duration::from_secs(2), Duration::from_secs(60)).expect("events are readable");
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut per_vehicle: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for r in &records {
        let v = r.json();
        let kind = v["type"].as_str().unwrap_or("<none>").to_string();
        *by_type.entry(kind.clone()).or_default() += 1;
        *seen.entry(v["event_id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        per_vehicle.entry(v["obu_id"].as_u64().unwrap_or_default()).or_default().push((v["seq"].as_u64().unwrap_or_default(), kind));
    }
    let mut duplicated: Vec<String> = seen.into_iter().filter(|(_, n)| *n > 1).map(|(id, _)| id).collect();
    duplicated.sort();
    let mut wrong = Vec::new();
    for obu in summary.acked_by_vehicle.keys() {
        let events = per_vehicle.get(obu).cloned().unwrap_or_default();
        let online = events.iter().filter(|(_, k)| k == "online").count();
        let ordered = events.windows(2).all(|w| w[0].0 <= w[1].0);
        if online != 1 || !ordered {
            wrong.push(format!("vehicle {obu}: {events:?}"));
        }
    }
    (by_type, duplicated, wrong)
}

/// When a fault happened, in seconds since the drill started.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    /// The first broker went down.
    start: f64,
    /// The last broker was started again.
    restore: f64,
    /// Every broker was back in the cluster.
    end: f64,
}

/// The drill's clock, for the fault to note its window.
struct Clock(Instant);

impl Clock {
    fn now(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// Runs one drill: steady traffic for 10 s, `fault` (blocking: it stops and starts brokers and
/// returns when the cluster is back), 15 s more traffic, then the accounting.
async fn drill<F>(name: &str, fault_takes: Duration, fault: F) -> (Accounting, Arc<Mutex<Timeline>>, Window)
where
    F: FnOnce(&mut Dedicated, &Topics, &Clock) -> Window,
{
    let mut cluster = cluster().await;
    let broker = cluster.broker().clone();
    let mut pipeline = start_pipeline(&broker).await;
    let started = Instant::now();
    let (timeline, watch) = monitor(&pipeline, started);
    let sim = fleet(pipeline.receiver_port, Duration::from_secs(10) + fault_takes + Duration::from_secs(15));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let window = tokio::task::block_in_place(|| fault(&mut cluster, &pipeline.topics, &Clock(started)));
    let summary = sim.await.expect("the simulator finished");
    assert_eq!(summary.dropped, 0, "{name}: the simulator's buffers never overflowed: {summary:?}");
    assert_eq!(summary.unacked, 0, "{name}: every position was answered in the end: {summary:?}");
    tokio::task::block_in_place(|| cluster.wait_fully_replicated(Duration::from_secs(120))).expect("the cluster is whole again");
    let accounting = account(&broker, &pipeline, &summary).await;

    // The tracker recovered by itself: it stored everything `positions` holds.
    let distinct = accounting.in_positions;
    let store = pipeline.tracker_store.clone();
    let stored = eventually(Duration::from_secs(120), || {
        let store = store.clone();
        async move { store.position_count().await.is_ok_and(|n| n as u64 >= distinct) }
    })
    .await;
    let stored_count = pipeline.tracker_store.position_count().await.unwrap_or(-1);
    watch.abort();
    let report = report_line(name, &accounting, &timeline, window);
    eprintln!("{report}");
    append_report(&report);
    assert!(accounting.lost.is_empty(), "{name}: acked positions missing from positions: {:?}", accounting.lost);
    assert!(accounting.dead_lettered.is_empty(), "{name}: the fleet's valid positions were dead-lettered: {:?}", accounting.dead_lettered);
    assert!(accounting.duplicated.is_empty(), "{name}: positions twice in `positions`: {:?}", accounting.duplicated);
    assert!(accounting.duplicated_events.is_empty(), "{name}: events twice in `events`: {:?}", accounting.duplicated_events);
    assert!(accounting.wrong_events.is_empty(), "{name}: vehicles with events out of order or not online once: {:?}", accounting.wrong_events);
    assert!(stored, "{name}: the tracker stored every position: {stored_count} of {distinct}");
    assert!(pipeline.receiver.shutdown().await.is_ok(), "{name}: the receiver stops cleanly");
    assert!(pipeline.processor.shutdown().await.is_ok(), "{name}: the processor stops cleanly");
    assert!(pipeline.tracker.shutdown().await.is_ok(), "{name}: the tracker stops cleanly");
    (accounting, timeline, window)
}

fn report_line(name: &str, a: &Accounting, timeline: &Arc<Mutex<Timeline>>, w: Window) -> String {
    let t = timeline.lock().unwrap_or_else(|p| p.into_inner());
    let fmt = |v: Option<f64>| v.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "-".into());
    format!(
        "drill {name}: sent {} ({} with resends), acked {}, lost {}, duplicated {}, dead-lettered {:?}; events {:?}, duplicated {}; fault {:.1}-{:.1} s; \
         longest pause in acks {:.1} s, in processor commits {:.1} s; after the brokers were started again acks resumed in {}, \
         commits in {}",
        a.generated,
        a.sent,
        a.acked,
        a.lost.len(),
        a.duplicated.len(),
        a.dead_lettered,
        a.events,
        a.duplicated_events.len(),
        w.start,
        w.end,
        t.longest_pause(1),
        t.longest_pause(2),
        fmt(t.resumed_after(1, w.restore)),
        fmt(t.resumed_after(2, w.restore)),
    )
}

fn append_report(line: &str) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("drills.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// The node leading most partitions of `topic`.
fn leader_of_most(broker: &Broker, topic: &str) -> u32 {
    let mut count: BTreeMap<i32, usize> = BTreeMap::new();
    for (_, leader) in broker.leaders(topic).expect("the topic's leaders are known") {
        *count.entry(leader).or_default() += 1;
    }
    let (leader, _) = count.into_iter().max_by_key(|(_, n)| *n).expect("the topic has partitions");
    u32::try_from(leader).expect("a leader is a node id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drill_1_the_leader_of_most_raw_partitions_is_killed_and_back_20_s_later() {
    drill("1 kill -9 leader", Duration::from_secs(25), |cluster, topics, clock| {
        let victim = leader_of_most(cluster.broker(), &topics.raw);
        let start = clock.now();
        cluster.kill(victim).expect("kill -9");
        std::thread::sleep(Duration::from_secs(20));
        let restore = clock.now();
        cluster.restart(victim).expect("the killed broker restarts");
        Window { start, restore, end: clock.now() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drill_2_a_rolling_restart_of_all_three_brokers() {
    drill("2 rolling restart", Duration::from_secs(45), |cluster, _, clock| {
        let start = clock.now();
        let mut restore = start;
        for id in cluster.node_ids() {
            cluster.terminate(id).expect("SIGTERM: a controlled shutdown");
            restore = clock.now();
            cluster.restart(id).expect("the broker restarts");
            cluster.wait_fully_replicated(Duration::from_secs(120)).expect("in sync again before the next");
        }
        Window { start, restore, end: clock.now() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drill_3_two_of_three_brokers_down_for_20_s_nothing_is_acked_meanwhile() {
    let (_, timeline, w) = drill("3 two of three down", Duration::from_secs(25), |cluster, _, clock| {
        let ids = cluster.node_ids();
        let start = clock.now();
        cluster.kill(ids[1]).expect("kill -9");
        cluster.kill(ids[2]).expect("kill -9");
        std::thread::sleep(Duration::from_secs(20));
        let restore = clock.now();
        cluster.restart_all().expect("both brokers restart");
        Window { start, restore, end: clock.now() }
    })
    .await;
    let t = timeline.lock().unwrap_or_else(|p| p.into_inner());
    // acks=all with min.insync.replicas=2 cannot be met by one broker: after what was already
    // on its way when the brokers died, the receiver acknowledges nothing until they are back.
    assert_eq!(t.acks_between(w.start + 3.0, w.restore), 0.0, "no ack while only one broker was up");
    assert!(t.unready_between(w.start, w.end), "/readyz turned false while acks=all could not be met");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drill_4_the_whole_cluster_stops_for_30_s_and_everything_recovers_by_itself() {
    let (_, timeline, w) = drill("4 whole cluster down", Duration::from_secs(45), |cluster, _, clock| {
        let start = clock.now();
        cluster.terminate_all().expect("every broker stops");
        std::thread::sleep(Duration::from_secs(30));
        let restore = clock.now();
        cluster.restart_all().expect("every broker starts again");
        Window { start, restore, end: clock.now() }
    })
    .await;
    let t = timeline.lock().unwrap_or_else(|p| p.into_inner());
    assert!(t.unready_between(w.start, w.end), "/readyz turned false while Kafka was down");
}
