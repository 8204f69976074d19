//! `healthcheck PORT [PATH]`: the health probe of the fleetstream images (see the crate docs).

use clap::Parser as _;

fn main() {
    let probe = fleetstream_healthcheck::Probe::parse();
    match probe.run() {
        Ok(()) => {}
        Err(error) => {
            // Docker keeps the last lines a health check printed: `docker inspect` shows why.
            eprintln!("healthcheck: {error:#}");
            std::process::exit(1);
        }
    }
}
