//! `deprovision healthcheck`: the container's HEALTHCHECK. Probes `/healthz` of a
//! `serve` process on this host; distroless images have no curl.

use std::process::ExitCode;
use std::time::Duration;

use deprovision::config::HealthArgs;

/// Flags of `deprovision healthcheck`.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    health: HealthArgs,
}

/// Exit 0 when `/healthz` answers 200 within 3 s, 1 otherwise.
pub async fn run(args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    match deprovision::telemetry::probe_health(
        args.health.health_addr.port(),
        Duration::from_secs(3),
    )
    .await
    {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("unhealthy: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
