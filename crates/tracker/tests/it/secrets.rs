//! The tracker's secrets never show: API tokens, the Kafka password and the database password
//! are absent from `--help`, its logs (debug level, human and JSON), `/metrics`, `/readyz`, API
//! answers to a good and a wrong token, and the error it stops with when the database refuses.

use std::path::Path;
use std::time::Duration;

use fleetstream_testkit::secrets::{leaks, sasl_env, SecretsCheck};
use fleetstream_testkit::{free_port, unique, Broker};

fn kafka_env(broker: &Broker, password: &str) -> Vec<(String, String)> {
    sasl_env(&broker.brokers(), "tracker", password)
}

#[test]
fn api_tokens_and_the_kafka_password_never_show() {
    let broker = Broker::shared();
    let (token, password, port) = (unique("api-token"), unique("kafka-password"), free_port());
    let db = std::env::temp_dir().join(unique("fleetstream-secrets-db"));
    std::fs::create_dir_all(&db).expect("a temp dir");
    let mut env = kafka_env(&broker, &password);
    env.push(("TRACKER_API_TOKENS".into(), format!("{token} admin")));
    env.push(("DATABASE_URL".into(), format!("sqlite://{}/tracker.db", db.display())));
    let check = SecretsCheck {
        args: vec![format!("--listen=127.0.0.1:{port}"), format!("--group-id={}", unique("secrets"))],
        env,
        secrets: vec![token.clone(), password],
        pages: vec![
            (port, "/metrics".into(), None),
            (port, "/readyz".into(), None),
            (port, "/api/vehicles".into(), Some(format!("Bearer {token}"))),
            (port, "/api/vehicles".into(), Some(format!("Bearer x{token}"))),
            (port, "/api/geofences".into(), Some(format!("Bearer {token}"))),
        ],
        run_for: Duration::from_secs(6),
        exits: false,
    };
    let found = leaks(Path::new(env!("CARGO_BIN_EXE_tracker")), &check).expect("the check runs");
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_database_password_never_shows_even_when_the_database_refuses() {
    let broker = Broker::shared();
    let (db_password, kafka_password) = (unique("db-password"), unique("kafka-password"));
    let mut env = kafka_env(&broker, &kafka_password);
    // Nothing listens there: the tracker stops at start-up with an error about the database.
    env.push(("DATABASE_URL".into(), format!("postgres://fleet:{db_password}@127.0.0.1:{}/fleet", free_port())));
    let check = SecretsCheck {
        args: vec!["--listen=127.0.0.1:0".into()],
        env,
        secrets: vec![db_password, kafka_password],
        run_for: Duration::from_secs(40),
        exits: true,
        ..Default::default()
    };
    let found = leaks(Path::new(env!("CARGO_BIN_EXE_tracker")), &check).expect("the check runs");
    assert!(found.is_empty(), "{found:#?}");
}
