//! The dlq tool's Kafka password never shows: not in `--help`, its logs or its error.

use std::path::Path;
use std::time::Duration;

use fleetstream_testkit::secrets::{leaks, sasl_env, SecretsCheck};
use fleetstream_testkit::{unique, Broker};

#[test]
fn the_kafka_password_never_shows() {
    let broker = Broker::shared();
    let password = unique("kafka-password");
    let check = SecretsCheck {
        args: vec!["count".into(), "--timeout=5s".into()],
        env: sasl_env(&broker.brokers(), "dlq", &password),
        secrets: vec![password],
        run_for: Duration::from_secs(30),
        exits: true,
        ..Default::default()
    };
    let found = leaks(Path::new(env!("CARGO_BIN_EXE_dlq")), &check).expect("the check runs");
    assert!(found.is_empty(), "{found:#?}");
}
