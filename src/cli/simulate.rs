//! `deprovision simulate`: the Genesys Cloud SCIM simulator on a port.

use std::process::ExitCode;

/// Flags of `deprovision simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {}

/// Serves until SIGINT/SIGTERM.
pub async fn run(_args: SimulateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the simulator is being built (issue 3)")
}
