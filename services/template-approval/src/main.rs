//! The template-approval service.

#[global_allocator]
static ALLOCATOR: wa_platform::Allocator = wa_platform::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = wa_platform::telemetry::init(template_approval::SERVICE)?;
    let config = template_approval::Config::from_env()?;
    template_approval::run(config, wa_platform::shutdown::on_signal()).await
}
