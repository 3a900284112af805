//! The ingress service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = wa_platform::telemetry::init(ingress::SERVICE)?;
    let config = ingress::Config::from_env()?;
    ingress::run(config, wa_platform::shutdown::on_signal()).await
}
