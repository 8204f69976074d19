//! The receiver's secrets never show: device tokens and the Kafka password are absent from
//! `--help`, its logs (debug level, human and JSON), `/metrics`, `/readyz` and its answers to
//! upgrade requests carrying a good or a wrong token.

use std::path::Path;
use std::time::Duration;

use fleetstream_testkit::secrets::{leaks, sasl_env, SecretsCheck};
use fleetstream_testkit::{free_port, unique, Broker};

#[test]
fn device_tokens_and_the_kafka_password_never_show() {
    let broker = Broker::shared();
    let (token, password, port) = (unique("device-token"), unique("kafka-password"), free_port());
    let check = SecretsCheck {
        args: vec![format!("--listen=127.0.0.1:{port}")],
        env: [sasl_env(&broker.brokers(), "receiver", &password), vec![
            ("RECEIVER_AUTH".into(), "token".into()),
            ("RECEIVER_AUTH_TOKENS".into(), format!("{token} *")),
        ]]
        .concat(),
        secrets: vec![token.clone(), password],
        pages: vec![
            (port, "/metrics".into(), None),
            (port, "/readyz".into(), None),
            (port, "/ws".into(), Some(format!("Bearer {token}"))),
            (port, "/ws".into(), Some(format!("Bearer x{token}"))),
        ],
        run_for: Duration::from_secs(6),
        exits: false,
    };
    let found = leaks(Path::new(env!("CARGO_BIN_EXE_receiver")), &check).expect("the check runs");
    assert!(found.is_empty(), "{found:#?}");
}
