//! The outbound-dispatch service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = wa_platform::telemetry::init(outbound_dispatch::SERVICE)?;
    let config = outbound_dispatch::Config::from_env()?;
    outbound_dispatch::run(config, wa_platform::shutdown::on_signal()).await
}
