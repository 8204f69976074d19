//! The simulator's device token never shows: not in `--help`, its logs (debug level, human and
//! JSON) or `/metrics`, while it keeps failing to reach a receiver.

use std::path::Path;
use std::time::Duration;

use fleetstream_testkit::secrets::{leaks, SecretsCheck};
use fleetstream_testkit::{free_port, unique};

#[test]
fn the_device_token_never_shows() {
    let (token, metrics) = (unique("device-token"), free_port());
    let check = SecretsCheck {
        args: vec![
            format!("--url=ws://127.0.0.1:{}/ws", free_port()),
            "--vehicles=2".into(),
            format!("--metrics-listen=127.0.0.1:{metrics}"),
        ],
        env: vec![("SIM_TOKEN".into(), token.clone())],
        secrets: vec![token],
        pages: vec![(metrics, "/metrics".into(), None)],
        run_for: Duration::from_secs(4),
        exits: false,
    };
    let found = leaks(Path::new(env!("CARGO_BIN_EXE_obu-sim")), &check).expect("the check runs");
    assert!(found.is_empty(), "{found:#?}");
}
