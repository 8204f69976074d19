//! `dlq`: inspect and redrive fleetstream's dead letters (see the crate docs).

use clap::Parser as _;
use fleetstream_dlq::Config;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    fleetstream_core::telemetry::init(&config.log);
    let mut out = std::io::stdout().lock();
    if let Err(error) = fleetstream_dlq::run(&config, &mut out).await {
        eprintln!("dlq: error: {error:#}");
        std::process::exit(1);
    }
}
