//! The Twilio simulator.

#[global_allocator]
static ALLOCATOR: wa_platform::Allocator = wa_platform::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = wa_platform::telemetry::init(twilio_sim::SERVICE)?;
    let config = twilio_sim::Config::from_env()?;
    twilio_sim::run(config, wa_platform::shutdown::on_signal()).await
}
