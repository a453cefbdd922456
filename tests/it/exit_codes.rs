//! Exit statuses of settings and flag values that cannot be used (README, "Exit
//! status"; tester's report): a missing, empty or invalid variable — including
//! an unsupported `DATABASE_URL` and a `PROTECTED_GROUPS` entry matching no
//! group — exits 78 (`EX_CONFIG`) naming the variable; a flag value that cannot
//! be used (`--from` after `--to`, a malformed `MANIFEST_ID`, a zero count or
//! duration) exits 64 (`EX_USAGE`) naming the flag or its variable; a start-up
//! failure that is not configuration (the login server refusing the client)
//! stays 1. Runs the real binary in a temporary directory against the
//! simulator, with an environment holding only `PATH` and what each case sets.

use deprovision::sim::{ResourceKind, RunningSim};

use crate::pipeline::harness::{PRIMARY, bin, records, sim_config, start_sim};

/// One case: what it is, the environment, text standard error must contain.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

/// A simulator holding `EC0001` and `EC0002`.
async fn directory() -> RunningSim {
    let (config, _) = sim_config(&records("EC", 2));
    start_sim(config).await
}

/// Runs the binary in `dir` with `PATH` and `env` only (no `.env` file).
async fn run_with(
    dir: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run deprovision");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts the exit status and that standard error names `names` (each).
fn expect(case: &str, got: (Option<i32>, String, String), code: i32, names: &[&str]) {
    let (status, out, err) = got;
    assert_eq!(status, Some(code), "{case}\nstdout: {out}\nstderr: {err}");
    for name in names {
        assert!(err.contains(name), "{case}: names {name}: {err}");
    }
}

/// Each missing, empty or unusable setting of the tester's report exits 78
/// naming its variable, before any change is made.
#[tokio::test]
async fn an_unusable_setting_exits_78_naming_the_variable() {
    let sim = directory().await;
    let api = sim.base_url().to_string();
    let user = ["user", "--external-id", "EC0001"];
    let genesys = [
        ("GENESYS_API_URL", api.as_str()),
        ("PRIMARY_CLIENT_ID", PRIMARY.0),
        ("PRIMARY_CLIENT_SECRET", PRIMARY.1),
    ];
    let without = |name: &str| {
        genesys
            .iter()
            .copied()
            .filter(|(k, _)| *k != name)
            .collect::<Vec<_>>()
    };
    let with = |extra: (&'static str, &'static str)| {
        let mut env = genesys.to_vec();
        env.push(extra);
        env
    };
    let cases: Vec<Case> = vec![
        (
            "PRIMARY_CLIENT_ID unset",
            without("PRIMARY_CLIENT_ID"),
            "PRIMARY_CLIENT_ID is required",
        ),
        (
            "PRIMARY_CLIENT_ID empty",
            {
                let mut env = without("PRIMARY_CLIENT_ID");
                env.push(("PRIMARY_CLIENT_ID", ""));
                env
            },
            "PRIMARY_CLIENT_ID is required",
        ),
        (
            "PRIMARY_CLIENT_SECRET blank",
            {
                let mut env = without("PRIMARY_CLIENT_SECRET");
                env.push(("PRIMARY_CLIENT_SECRET", "  "));
                env
            },
            "PRIMARY_CLIENT_SECRET is required",
        ),
        (
            "no GENESYS_REGION nor API URL",
            without("GENESYS_API_URL"),
            "GENESYS_REGION is required",
        ),
        (
            "GENESYS_REGION empty",
            {
                let mut env = without("GENESYS_API_URL");
                env.push(("GENESYS_REGION", ""));
                env
            },
            "GENESYS_REGION is required",
        ),
        (
            "GENESYS_REGION not an environment",
            {
                let mut env = without("GENESYS_API_URL");
                env.push(("GENESYS_REGION", "nowhere"));
                env
            },
            "GENESYS_REGION is invalid",
        ),
        (
            "DATABASE_URL mysql",
            with(("DATABASE_URL", "mysql://x")),
            "DATABASE_URL",
        ),
        (
            "PROTECTED_GROUPS matches no group",
            with(("PROTECTED_GROUPS", "NoSuchGroup")),
            "PROTECTED_GROUPS",
        ),
    ];
    for (case, env, names) in cases {
        let dir = tempfile::tempdir().expect("dir");
        let got = run_with(dir.path(), &env, &user).await;
        expect(case, got, 78, &[names]);
    }
    let stats = sim.stats();
    assert_eq!(stats.count(ResourceKind::Users, "PATCH"), 0, "no change");
    assert!(sim.users_by_external_id("EC0001")[0].active);
    // Only the PROTECTED_GROUPS case logs in (to look the group up): an empty
    // client id is never sent to the login server.
    assert_eq!(stats.count(ResourceKind::Token, "POST"), 1, "one login");
}

/// A flag value that cannot be used exits 64 naming the flag: `--from` after
/// `--to` (refused before the audit database is opened) and a `MANIFEST_ID` that
/// is not 16 hex digits (`approve` and `reject`).
#[tokio::test]
async fn an_unusable_flag_value_exits_64_naming_the_flag() {
    let dir = tempfile::tempdir().expect("dir");
    let got = run_with(
        dir.path(),
        &[],
        &[
            "report",
            "evidence",
            "--from",
            "2026-12-01",
            "--to",
            "2026-11-01",
            "--format",
            "csv",
        ],
    )
    .await;
    expect(
        "--from after --to",
        got,
        64,
        &["--from 2026-12-01", "--to 2026-11-01"],
    );
    for command in ["approve", "reject"] {
        let got = run_with(dir.path(), &[], &[command, "zz"]).await;
        expect(command, got, 64, &["MANIFEST_ID", "not a MANIFEST_ID"]);
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "no audit database was opened"
    );
}

/// A zero count or duration where 0 makes no sense exits 64 naming the variable
/// (set in the environment) or the flag (on the command line), before anything
/// runs.
#[tokio::test]
async fn a_zero_limit_exits_64_naming_the_variable() {
    let dir = tempfile::tempdir().expect("dir");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/terminations.json");
    let run = ["run", "--sandbox", example];
    let serve = ["serve"];
    let user = ["user", "--external-id", "EC0001"];
    let cases: [(&str, &[&str]); 7] = [
        ("CONCURRENCY", &run),
        ("SCIM_TIMEOUT_SECS", &run),
        ("SCIM_TIMEOUT_SECS", &user),
        ("ATTEMPT_TIMEOUT_SECS", &serve),
        ("DRAIN_DEADLINE_SECS", &serve),
        ("RETRY_BASE_SECS", &serve),
        ("HOLD_RELEASE_INTERVAL_SECS", &serve),
    ];
    for (var, args) in cases {
        let got = run_with(dir.path(), &[(var, "0")], args).await;
        expect(var, got, 64, &[var, "0 is not in 1.."]);
    }
    let got = run_with(
        dir.path(),
        &[],
        &["run", "--sandbox", "--concurrency", "0", example],
    )
    .await;
    expect("--concurrency 0", got, 64, &["--concurrency"]);
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "nothing was opened"
    );
}

/// `MAX_TERMINATIONS_PER_MANIFEST=0` is allowed and holds every manifest: the
/// sandbox run of the example stops as held (exit 3), nothing done.
#[tokio::test]
async fn a_zero_manifest_limit_holds_every_manifest() {
    let dir = tempfile::tempdir().expect("dir");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/terminations.json");
    let got = run_with(
        dir.path(),
        &[("MAX_TERMINATIONS_PER_MANIFEST", "0")],
        &["run", "--sandbox", example],
    )
    .await;
    expect(
        "limit 0",
        got,
        3,
        &["held by the mass-deactivation breaker"],
    );
}

/// A start-up failure that is not configuration stays 1: the login server
/// refusing the primary client (a wrong secret) stops `run` before anyone is
/// attempted.
#[tokio::test]
async fn a_refused_login_at_start_up_exits_1() {
    let sim = directory().await;
    let api = sim.base_url().to_string();
    let dir = tempfile::tempdir().expect("dir");
    let manifest = dir.path().join("m.json");
    std::fs::write(
        &manifest,
        r#"[{"externalId": "EC0001", "terminationDate": "2026-01-05"}]"#,
    )
    .expect("manifest");
    let manifest = manifest.to_string_lossy().into_owned();
    let got = run_with(
        dir.path(),
        &[
            ("GENESYS_API_URL", api.as_str()),
            ("PRIMARY_CLIENT_ID", PRIMARY.0),
            ("PRIMARY_CLIENT_SECRET", "not-the-secret"),
        ],
        &["run", &manifest],
    )
    .await;
    expect("login refused", got, 1, &["cannot get a token"]);
    assert_eq!(sim.stats().count(ResourceKind::Users, "PATCH"), 0);
    assert!(sim.users_by_external_id("EC0001")[0].active);
}

/// The third tester's cases: a malformed `--expect-head` is a usage error, not
/// evidence of removed rows; `replay-dlq --max 0` is refused; `approve` without
/// `TERMINATIONS_QUEUE_URL` is a configuration error; a closed standard error
/// never turns an error into a panic (exit 101).
#[tokio::test]
async fn operator_typos_and_a_closed_stderr_get_the_documented_status() {
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let migrated = run_with(dir.path(), &[("DATABASE_URL", &db)], &["migrate"]).await;
    assert_eq!(migrated.0, Some(0), "{migrated:?}");
    let got = run_with(
        dir.path(),
        &[("DATABASE_URL", &db)],
        &["audit", "verify", "--expect-head", "deadbeef"],
    )
    .await;
    expect("--expect-head deadbeef", got, 64, &["64 hex digits"]);
    let got = run_with(dir.path(), &[], &["replay-dlq", "--max", "0"]).await;
    expect("--max 0", got, 64, &["--max"]);
    let got = run_with(
        dir.path(),
        &[("DATABASE_URL", &db), ("MESSAGE_SIGNING", "off")],
        &["approve", "86dab6a5d3c62346", "--by", "bob"],
    )
    .await;
    expect(
        "approve without a queue",
        got,
        78,
        &["TERMINATIONS_QUEUE_URL"],
    );

    // Standard error closed before the error is written.
    let status = std::process::Command::new(bin())
        .args(["user", "--external-id", "E1"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GENESYS_API_URL", "http://[bad")
        .stdout(std::process::Stdio::null())
        .stderr({
            let (reader, writer) = std::io::pipe().expect("pipe");
            drop(reader);
            writer
        })
        .status()
        .expect("run deprovision");
    assert_eq!(status.code(), Some(64), "no panic on a closed stderr");
}
