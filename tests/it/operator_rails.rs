//! Operator-facing edges of the safety rails (tester's report), through the real
//! binary with sandbox runs on SQLite: a blank `--by` is refused by every command
//! that takes it; `run --approve` audits an approval only when the breaker would
//! have held the manifest; a held `run --format json` prints a document saying
//! so and names `run … --approve` as the way on; a dry run after `reject` says
//! the content was rejected; `dispatch --dry-run` reports the breaker's verdict
//! without recording a hold; a refused command-line value exits 64 naming the
//! environment variable it came from, an unusable setting exits 78.

use deprovision::audit::AuditStore;
use sha2::{Digest, Sha256};
use sqlx::{Row, SqlitePool};

use crate::pipeline::harness::{bin, json_manifest, records};

/// Runs the binary with `env` added; returns exit code, stdout and stderr.
async fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("MAX_TERMINATIONS_PER_MANIFEST")
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

fn manifest_id(body: &str) -> String {
    hex::encode(Sha256::digest(body.as_bytes()))[..16].to_owned()
}

/// A manifest of `n` terminations written in `dir`; its path and id.
fn manifest(dir: &std::path::Path, prefix: &str, n: usize) -> (String, String) {
    let body = json_manifest(&records(prefix, n));
    let path = dir.join(format!("{prefix}.json"));
    std::fs::write(&path, &body).expect("write manifest");
    (path.display().to_string(), manifest_id(&body))
}

/// Audit rows as (action, outcome, message, actor), in id order.
async fn rows(db: &str) -> Vec<(String, String, String, Option<String>)> {
    let pool = SqlitePool::connect(db).await.expect("sqlite");
    let rows = sqlx::query(
        "SELECT action, outcome, coalesce(error_message, '') AS m, actor FROM scim_audit_log ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("audit rows")
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect();
    pool.close().await;
    rows
}

/// `--by ""` / `--by "   "` is refused before anything is opened, for every
/// command that takes it; the audit database is never created.
#[tokio::test]
async fn a_blank_by_is_refused_by_every_command() {
    let dir = tempfile::tempdir().expect("dir");
    let (path, _) = manifest(dir.path(), "BB", 2);
    let db = format!("sqlite://{}", dir.path().join("audit.db").display());
    let env = [("DATABASE_URL", db.as_str())];
    let id = "0123456789abcdef";
    let commands: [&[&str]; 6] = [
        &["reject", id, "--by", ""],
        &["approve", id, "--by", "   "],
        &[
            "run",
            "--sandbox",
            "--sandbox-database-url",
            &db,
            "--approve",
            "--by",
            "   ",
            &path,
        ],
        &["run", &path, "--by", "\t"],
        &["user", "--external-id", "BB0001", "--by", ""],
        &["replay-dlq", "--by", " "],
    ];
    for args in commands {
        let (code, out, err) = run(args, &env).await;
        assert_eq!(code, Some(64), "{args:?}\n{out}\n{err}");
        assert!(err.contains("--by"), "{args:?}: names the flag: {err}");
        assert!(err.contains("blank name"), "{args:?}: says why: {err}");
        assert!(
            !dir.path().join("audit.db").exists(),
            "{args:?}: nothing was opened"
        );
    }
}

/// `run --approve` on a manifest under the limits dispatches it with no
/// `approve` row; over the limits it records who approved, once.
#[tokio::test]
async fn run_approve_audits_only_an_approval_that_overrides_the_breaker() {
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("sandbox.db").display());
    let env = [("MAX_TERMINATIONS_PER_MANIFEST", "3")];
    let sandbox = [
        "run",
        "--sandbox",
        "--sandbox-database-url",
        &db,
        "--format",
        "json",
    ];

    let (small, _) = manifest(dir.path(), "AS", 2);
    let mut args = sandbox.to_vec();
    args.extend(["--approve", "--by", "dave", &small]);
    let (code, out, err) = run(&args, &env).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    let audit = rows(&db).await;
    assert!(
        audit.iter().all(|r| r.0 != "approve"),
        "nothing was held, so nothing was approved: {audit:?}"
    );
    assert_eq!(audit.iter().filter(|r| r.1 == "deactivated").count(), 2);

    let (large, id) = manifest(dir.path(), "AL", 4);
    let mut args = sandbox.to_vec();
    args.extend(["--approve", "--by", "dave", &large]);
    let (code, out, err) = run(&args, &env).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    let approvals: Vec<_> = rows(&db)
        .await
        .into_iter()
        .filter(|r| r.0 == "approve")
        .collect();
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    assert_eq!(approvals[0].3.as_deref(), Some("dave"));
    assert!(approvals[0].2.contains(&id), "{approvals:?}");
}

/// A held `run --format json` prints a JSON document (held, id, reason, how to
/// proceed) and exits 3; the held audit row names `run … --approve`, not
/// `deprovision approve` (which refuses a local file).
#[tokio::test]
async fn a_held_run_prints_json_and_names_run_approve_as_the_way_on() {
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("sandbox.db").display());
    let (path, id) = manifest(dir.path(), "HJ", 3);
    let env = [("MAX_TERMINATIONS_PER_MANIFEST", "1")];
    let (code, out, err) = run(
        &[
            "run",
            "--sandbox",
            "--sandbox-database-url",
            &db,
            "--format",
            "json",
            &path,
        ],
        &env,
    )
    .await;
    assert_eq!(code, Some(3), "{out}\n{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("a JSON document");
    assert_eq!(doc["held"], true, "{doc}");
    assert_eq!(doc["manifestId"], id.as_str(), "{doc}");
    assert_eq!(doc["enqueued"], 0, "{doc}");
    let reason = doc["reason"].as_str().expect("reason");
    assert!(reason.contains("MAX_TERMINATIONS_PER_MANIFEST=1"), "{doc}");
    let approve = doc["approve"].as_str().expect("approve");
    assert!(
        approve.contains(&format!("deprovision run {path} --approve")),
        "{doc}"
    );
    assert!(
        doc["reject"].as_str().expect("reject").contains(&id),
        "{doc}"
    );

    let held: Vec<_> = rows(&db)
        .await
        .into_iter()
        .filter(|r| r.1 == "held")
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(
        held[0]
            .2
            .contains(&format!("deprovision run {path} --approve")),
        "{held:?}"
    );
    assert!(!held[0].2.contains("deprovision approve"), "{held:?}");

    // The text format prints no document (the summary is on stderr).
    let (code, out, err) = run(
        &["run", "--sandbox", "--sandbox-database-url", &db, &path],
        &env,
    )
    .await;
    assert_eq!(code, Some(3), "{out}\n{err}");
    assert!(!out.trim_start().starts_with('{'), "{out}");
}

/// After `reject`, `run --dry-run [--approve] --format json` says the content
/// was rejected (who, when) in the plan's breaker object and on stderr.
#[tokio::test]
async fn a_dry_run_of_rejected_content_says_it_was_rejected() {
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("sandbox.db").display());
    let (path, id) = manifest(dir.path(), "DJ", 3);
    let env = [
        ("MAX_TERMINATIONS_PER_MANIFEST", "1"),
        ("DATABASE_URL", db.as_str()),
    ];
    let base = [
        "run",
        "--sandbox",
        "--sandbox-database-url",
        &db,
        "--format",
        "json",
    ];
    let mut args = base.to_vec();
    args.push(&path);
    let (code, out, err) = run(&args, &env).await;
    assert_eq!(code, Some(3), "{out}\n{err}");

    // Before the rejection the plan carries no `rejected`.
    let mut dry = base.to_vec();
    dry.extend(["--dry-run", "--approve", &path]);
    let (code, out, err) = run(&dry, &env).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("plan");
    assert!(plan["breaker"].get("rejected").is_none(), "{plan}");

    let (code, out, err) = run(&["reject", &id, "--by", "carol"], &env).await;
    assert_eq!(code, Some(0), "{out}\n{err}");

    for approve in [true, false] {
        let mut dry = base.to_vec();
        dry.push("--dry-run");
        if approve {
            dry.push("--approve");
        }
        dry.push(&path);
        let (code, out, err) = run(&dry, &env).await;
        assert_eq!(code, Some(0), "{out}\n{err}");
        let plan: serde_json::Value = serde_json::from_str(&out).expect("plan");
        let b = &plan["breaker"];
        assert_eq!(b["rejected"]["by"], "carol", "{plan}");
        assert_eq!(b["rejected"]["manifestId"], id.as_str(), "{plan}");
        assert!(b["rejected"]["at"].is_string(), "{plan}");
        assert_eq!(b["wouldHold"], true, "{plan}");
        assert!(err.contains("was rejected by carol"), "{err}");
        assert!(err.contains("even with --approve"), "{err}");
    }
}

/// `dispatch --dry-run` of an over-limit manifest reports the breaker's
/// verdict (would hold, nothing would be enqueued) and exits 3 like the real
/// dispatch, recording no hold; under the limit it reports no hold, exit 0.
#[tokio::test]
async fn dispatch_dry_run_reports_what_the_breaker_would_do() {
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("audit.db").display());
    let (path, id) = manifest(dir.path(), "DD", 6);
    let over = [
        ("DATABASE_URL", db.as_str()),
        ("MAX_TERMINATIONS_PER_MANIFEST", "5"),
    ];
    let (code, out, err) = run(&["dispatch", "--dry-run", &path], &over).await;
    assert_eq!(code, Some(3), "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["would_enqueue"], 0, "{report}");
    let why = report["would_hold"].as_str().expect("would_hold");
    assert!(why.contains("MAX_TERMINATIONS_PER_MANIFEST=5"), "{report}");
    assert_eq!(report["breaker"]["wouldHold"], true, "{report}");
    assert!(err.contains(&id), "{err}");
    let store = AuditStore::connect(&db).await.expect("db");
    assert!(
        store.held_manifest(&id).await.expect("read").is_none(),
        "no hold recorded"
    );
    store.close().await;

    let under = [
        ("DATABASE_URL", db.as_str()),
        ("MAX_TERMINATIONS_PER_MANIFEST", "6"),
    ];
    let (code, out, err) = run(&["dispatch", "--dry-run", &path], &under).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["would_enqueue"], 6, "{report}");
    assert!(report["would_hold"].is_null(), "{report}");
    assert_eq!(report["breaker"]["wouldHold"], false, "{report}");
}

/// A refused command-line value exits 64 (EX_USAGE, not 2, which means "the
/// file is rejected whole") and, when it came from an environment variable,
/// names the variable; a setting that cannot be used exits 78 (EX_CONFIG)
/// naming it. Nothing is opened either way.
#[tokio::test]
async fn configuration_errors_exit_with_their_own_codes_naming_the_variable() {
    let dir = tempfile::tempdir().expect("dir");
    let (path, _) = manifest(dir.path(), "CE", 2);
    let db = format!("sqlite://{}", dir.path().join("sandbox.db").display());
    let sandbox = ["run", "--sandbox", "--sandbox-database-url", &db, &path];

    let (code, out, err) = run(&sandbox, &[("REMOVE_ROLES", "yes")]).await;
    assert_eq!(code, Some(64), "{out}\n{err}");
    assert!(err.contains("--remove-roles"), "{err}");
    assert!(err.contains("environment variable REMOVE_ROLES"), "{err}");

    // Given on the command line, the flag is the source: no variable named.
    let mut flagged = sandbox.to_vec();
    flagged.extend(["--concurrency", "many"]);
    let (code, _, err) = run(&flagged, &[("REMOVE_ROLES", "true")]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--concurrency"), "{err}");
    assert!(!err.contains("environment variable"), "{err}");

    let (code, out, err) = run(&sandbox, &[("MAX_TERMINATIONS_SHARE", "2")]).await;
    assert_eq!(code, Some(78), "{out}\n{err}");
    assert!(err.contains("MAX_TERMINATIONS_SHARE"), "{err}");
    assert!(
        !dir.path().join("sandbox.db").exists(),
        "nothing was opened"
    );
}
