//! The ingress service.

#[global_allocator]
static ALLOCATOR: wa_platform::Allocator = wa_platform::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = wa_platform::telemetry::init(ingress::SERVICE)?;
    let config = ingress::Config::from_env()?;
    ingress::run(config, wa_platform::shutdown::on_signal()).await
}
