use clap::Parser;
use fleetstream_obu_sim::{run, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    fleetstream_core::telemetry::init(&config.log);
    let json = config.json;
    let summary = run(config, fleetstream_core::shutdown::signal()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{summary}");
    }
    Ok(())
}
