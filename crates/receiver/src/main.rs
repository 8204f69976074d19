use clap::Parser;
use fleetstream_receiver::{Application, Config};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    fleetstream_core::telemetry::init(&config.log);
    let app = Application::build(config).await?;
    app.run_until_stopped(fleetstream_core::shutdown::signal()).await
}
