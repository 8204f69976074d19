//! The processor's Kafka password never shows: not in `--help`, not in its logs (debug level,
//! human and JSON), not in the error it stops with when Kafka will not take it.

use std::path::Path;
use std::time::Duration;

use fleetstream_testkit::secrets::{leaks, sasl_env, SecretsCheck};
use fleetstream_testkit::{unique, Broker};

#[test]
fn the_kafka_password_never_shows() {
    let broker = Broker::shared();
    let password = unique("kafka-password");
    let check = SecretsCheck {
        args: vec!["--listen=127.0.0.1:0".into(), format!("--group-id={}", unique("secrets"))],
        env: sasl_env(&broker.brokers(), "processor", &password),
        secrets: vec![password],
        run_for: Duration::from_secs(40),
        exits: true,
        ..Default::default()
    };
    let found = leaks(Path::new(env!("CARGO_BIN_EXE_processor")), &check).expect("the check runs");
    assert!(found.is_empty(), "{found:#?}");
}
