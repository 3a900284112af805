//! The outbound-dispatch service.

#[global_allocator]
static ALLOCATOR: wa_platform::Allocator = wa_platform::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = wa_platform::telemetry::init(outbound_dispatch::SERVICE)?;
    let config = outbound_dispatch::Config::from_env()?;
    outbound_dispatch::run(config, wa_platform::shutdown::on_signal()).await
}
