//! The session-window service.

#[global_allocator]
static ALLOCATOR: wa_platform::Allocator = wa_platform::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = wa_platform::telemetry::init(session_window::SERVICE)?;
    let config = session_window::Config::from_env()?;
    session_window::run(config, wa_platform::shutdown::on_signal()).await
}
