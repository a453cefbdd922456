//! `deprovision simulate`: the Genesys Cloud SCIM simulator on a port, until
//! SIGINT or SIGTERM. Maps flags to a [`SimConfig`], prints the URL it listens on
//! (the line `listening on http://…/`) to standard output, and shuts down cleanly.
//! All behaviour lives in `deprovision::sim`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use deprovision::sim::{
    GroupRemoveForm, LargePage, NotFoundBody, PatchReturns, RetryAfterShape, RunningSim, Seed,
    SimClient, SimConfig, VersionMismatch,
};
use secrecy::SecretString;

/// `ID:SECRET` as given on the command line. `Debug` hides the secret.
#[derive(Debug, Clone)]
pub struct ClientArg {
    id: String,
    secret: SecretString,
}

fn parse_client(raw: &str) -> Result<ClientArg, String> {
    match raw.split_once(':') {
        Some((id, secret)) if !id.is_empty() && !secret.is_empty() => Ok(ClientArg {
            id: id.to_owned(),
            secret: SecretString::from(secret.to_owned()),
        }),
        _ => Err("expected ID:SECRET with both parts non-empty".to_owned()),
    }
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    let v: f64 = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

/// Flags of `deprovision simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port to listen on (0 picks a free one; the URL printed says which).
    #[arg(long, default_value_t = 8089)]
    port: u16,
    /// Generate this many active users with deterministic ids and externalIds.
    #[arg(long, default_value_t = 0, conflicts_with = "seed")]
    users: usize,
    /// Generate this many groups and spread the users' memberships over them.
    #[arg(long, default_value_t = 0, conflicts_with = "seed")]
    groups: usize,
    /// Seed the directory from a JSON file (users with id, userName, externalId,
    /// active, groups, roles; duplicate externalIds allowed).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// An OAuth client the token endpoint accepts, `ID:SECRET` (repeatable).
    #[arg(long = "client", value_parser = parse_client)]
    clients: Vec<ClientArg>,
    /// An elevated OAuth client, `ID:SECRET` (repeatable).
    #[arg(long = "elevated-client", value_parser = parse_client)]
    elevated_clients: Vec<ClientArg>,
    /// `expires_in` of issued tokens, seconds.
    #[arg(long, default_value_t = 86_400)]
    token_lifetime_secs: u64,
    /// A user id only an elevated client may change (repeatable).
    #[arg(long = "requires-elevated")]
    requires_elevated: Vec<String>,
    /// A user id every change to which gets 403 until `POST /_sim/allow/{id}`
    /// (repeatable).
    #[arg(long = "denied")]
    denied: Vec<String>,
    /// SCIM requests per client per window before 429.
    #[arg(long)]
    rate_limit_per_minute: Option<NonZeroU32>,
    /// Length of the rate-limit window, seconds.
    #[arg(long, default_value_t = 60)]
    rate_limit_window_secs: u64,
    /// Shape of Retry-After on a 429.
    #[arg(long, value_enum, default_value_t = RetryAfterShape::Seconds)]
    retry_after: RetryAfterShape,
    /// Mean added latency per request, milliseconds (uniform ±50% jitter).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of SCIM requests answered 500/503, 0 to 1.
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    error_rate: f64,
    /// Status of a successful PATCH.
    #[arg(long, value_enum, default_value_t = PatchReturns::Ok200)]
    patch_returns: PatchReturns,
    /// Answer PATCH active=false with success but leave the user active.
    #[arg(long)]
    ignore_active_patch: bool,
    /// Which group member removal form PATCH accepts.
    #[arg(long, value_enum, default_value_t = GroupRemoveForm::Both)]
    group_remove_form: GroupRemoveForm,
    /// Leave `groups` out of user resources.
    #[arg(long)]
    omit_user_groups: bool,
    /// How an If-Match mismatch is answered.
    #[arg(long, value_enum, default_value_t = VersionMismatch::Conflict)]
    if_match_mismatch: VersionMismatch,
    /// Body of a 404 for an unknown id.
    #[arg(long, value_enum, default_value_t = NotFoundBody::Platform)]
    not_found_body: NotFoundBody,
    /// What count > 25 without attributes/excludedAttributes gets.
    #[arg(long, value_enum, default_value_t = LargePage::Reject)]
    large_page: LargePage,
}

impl SimulateArgs {
    fn config(&self) -> anyhow::Result<SimConfig> {
        let seed = match &self.seed {
            Some(path) => Seed::from_file(path)?,
            None => Seed::generate(self.users, self.groups),
        };
        let mut clients: Vec<SimClient> = Vec::new();
        for (list, elevated) in [(&self.clients, false), (&self.elevated_clients, true)] {
            for c in list {
                clients.push(SimClient {
                    id: c.id.clone(),
                    secret: c.secret.clone(),
                    elevated,
                });
            }
        }
        Ok(SimConfig {
            seed,
            clients,
            token_lifetime: Duration::from_secs(self.token_lifetime_secs),
            requires_elevated: self.requires_elevated.iter().cloned().collect(),
            denied: self.denied.iter().cloned().collect(),
            rate_limit_per_minute: self.rate_limit_per_minute,
            rate_limit_window: Duration::from_secs(self.rate_limit_window_secs.max(1)),
            retry_after: self.retry_after,
            latency: Duration::from_millis(self.latency_ms),
            error_rate: self.error_rate,
            patch_returns: self.patch_returns,
            ignore_active_patch: self.ignore_active_patch,
            group_remove_form: self.group_remove_form,
            omit_user_groups: self.omit_user_groups,
            version_mismatch: self.if_match_mismatch,
            not_found_body: self.not_found_body,
            large_page: self.large_page,
        })
    }
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serves until SIGINT/SIGTERM, then shuts down and exits 0.
pub async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    if config.clients.is_empty() {
        tracing::warn!("no --client or --elevated-client given: every token request will fail");
    }
    let users = config.seed.users.len();
    let groups = config.seed.groups.len();
    let addr = SocketAddr::new(args.bind, args.port);
    let sim = RunningSim::start(config, addr)
        .await
        .with_context(|| format!("starting the simulator on {addr}"))?;
    // Standard output carries only this line, so scripts can read the URL.
    println!("listening on {}", sim.base_url());
    tracing::info!(
        users,
        groups,
        "simulator seeded; stop with Ctrl-C or SIGTERM"
    );
    terminated().await;
    tracing::info!("stopping the simulator");
    sim.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
