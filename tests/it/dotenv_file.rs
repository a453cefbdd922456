//! A `.env` file fails closed (issue 6, protected accounts; tester's report): a
//! `.env` that exists but has a malformed line stops every command at start-up,
//! naming the file, the line and the variable, never the value, before any
//! request is made; a well-formed one with a quoted `PROTECTED_GROUPS="Group 1"`
//! is honoured. A value dotenvy would load as something other than what is
//! written — a `$` outside single quotes (substituted, e.g. a protected `ADM$X`
//! becoming `ADM`), text after a closing quote, a variable set twice — stops
//! start-up the same way; a single-quoted `'ADM$X'` is literal and honoured.
//! Runs the real binary in a temporary directory against the simulator, with an
//! environment holding nothing but `PATH`.

use deprovision::sim::{ResourceKind, RunningSim, SeedGroupRef};

use deprovision::domain::ExternalId;

use crate::pipeline::harness::{PRIMARY, bin, records, sim_config, start_sim};

/// A simulator whose `DE0001` is a member of "Group 1".
async fn directory() -> RunningSim {
    let recs = records("DE", 2);
    let (config, mut seed) = sim_config(&recs);
    let member = seed
        .users
        .iter_mut()
        .find(|u| u.external_id.as_deref() == Some("DE0001"))
        .expect("DE0001");
    member.groups.push(SeedGroupRef::Name("Group 1".into()));
    start_sim(config.with_seed(seed)).await
}

/// The first four lines of the tester's `.env`: the simulator, its client and a
/// SQLite audit database inside `dir`.
fn head(sim: &RunningSim, dir: &std::path::Path) -> String {
    format!(
        "GENESYS_API_URL={}\nPRIMARY_CLIENT_ID={}\nPRIMARY_CLIENT_SECRET={}\nDATABASE_URL=sqlite://{}/audit.db\n",
        sim.base_url(),
        PRIMARY.0,
        PRIMARY.1,
        dir.display()
    )
}

/// Runs the binary in `dir` with only `PATH` in its environment.
async fn run_in(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .await
        .expect("run deprovision");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Each bad shape from the report, on line 5, before a `PROTECTED_*` line: exit
/// 78 naming `.env` and line 5, no value echoed, not one request to Genesys (not
/// even a token), no audit database created, the user still active.
#[tokio::test]
async fn a_malformed_env_line_stops_start_up_before_anything_is_done() {
    let sim = directory().await;
    // (line 5, the variable it names, text of the value that must not be echoed)
    let cases = [
        (
            "PROTECTED_GROUPS=Group 1",
            Some("PROTECTED_GROUPS"),
            "Group 1",
        ),
        ("NOTE=it's fine", Some("NOTE"), "fine"),
        ("KEY=va\"lue", Some("KEY"), "va\"l"),
        ("FOO=${BAR", Some("FOO"), "BAR"),
        ("this is not valid", None, "not valid"),
    ];
    for (bad, name, value) in cases {
        let dir = tempfile::tempdir().expect("dir");
        let env = format!(
            "{}{bad}\nPROTECTED_USERS=DE0001\nPROTECTED_GROUPS=\"Group 1\"\n",
            head(&sim, dir.path())
        );
        std::fs::write(dir.path().join(".env"), env).expect("write .env");
        for args in [
            &["user", "--external-id", "DE0001", "--dry-run"][..],
            &["user", "--external-id", "DE0001"][..],
        ] {
            let (code, out, err) = run_in(dir.path(), args).await;
            assert_eq!(code, Some(78), "{bad}: {args:?}\n{out}\n{err}");
            assert!(out.is_empty(), "{bad}: nothing on stdout: {out}");
            assert!(err.contains(".env, line 5"), "{bad}: {err}");
            if let Some(name) = name {
                assert!(err.contains(&format!("line 5 ({name})")), "{bad}: {err}");
            }
            assert!(err.contains("quote values"), "{bad}: the hint: {err}");
            assert!(!err.contains(value), "{bad}: the value is echoed: {err}");
        }
        assert!(
            !dir.path().join("audit.db").exists(),
            "{bad}: no audit database is opened"
        );
    }
    let stats = sim.stats();
    assert_eq!(
        stats.count(ResourceKind::Token, "POST"),
        0,
        "no token request"
    );
    assert_eq!(stats.count(ResourceKind::Users, "GET"), 0, "no lookup");
    assert!(sim.users_by_external_id("DE0001")[0].active);
}

/// A well-formed `.env` with the value quoted is honoured: the member of
/// "Group 1" is protected (plan and real run), the other user is not.
#[tokio::test]
async fn a_quoted_protected_group_in_env_is_honoured() {
    let sim = directory().await;
    let dir = tempfile::tempdir().expect("dir");
    let env = format!(
        "{}# break-glass admins\nexport PROTECTED_GROUPS=\"Group 1\"\nNOTE='it is fine'\n",
        head(&sim, dir.path())
    );
    std::fs::write(dir.path().join(".env"), env).expect("write .env");

    let (code, out, err) = run_in(
        dir.path(),
        &[
            "user",
            "--external-id",
            "DE0001",
            "--dry-run",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(code.is_some(), "{err}");
    assert!(
        out.contains("protected"),
        "the plan shows protected: {out}\n{err}"
    );

    let (code, out, err) = run_in(
        dir.path(),
        &["user", "--external-id", "DE0001", "--format", "json"],
    )
    .await;
    assert_eq!(code, Some(1), "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["outcome"], "protected", "{out}");
    assert!(sim.users_by_external_id("DE0001")[0].active);

    let (code, out, err) = run_in(
        dir.path(),
        &["user", "--external-id", "DE0002", "--format", "json"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!sim.users_by_external_id("DE0002")[0].active);
}

/// A simulator holding `ADM$X` (the account the tester's `.env` meant to
/// protect), `ADM` (what the substituted value would name instead) and `DE0002`.
async fn dollar_directory() -> RunningSim {
    let mut recs = records("DE", 3);
    recs[0].external_id = ExternalId::parse("ADM$X").expect("id");
    recs[2].external_id = ExternalId::parse("ADM").expect("id");
    let (config, _) = sim_config(&recs);
    start_sim(config).await
}

/// Lines 1-4 of a `.env` for the simulator; the audit database is the default
/// `deprovision.db` in the working directory.
fn head4(sim: &RunningSim) -> String {
    format!(
        "GENESYS_API_URL={}\nPRIMARY_CLIENT_ID={}\nPRIMARY_CLIENT_SECRET={}\nNOTE=ok\n",
        sim.base_url(),
        PRIMARY.0,
        PRIMARY.1,
    )
}

/// The tester's shapes on line 5: a `$` in a double-quoted or unquoted value
/// (before the closing quote, in `${…:-…}`, in a URL) and text after a closing
/// quote. Each stops `user` (real and dry run) with exit 78, naming `.env`, line
/// 5 and the variable, never the value, saying to use single quotes for a `$`;
/// no request reaches Genesys, no audit database is created, `ADM$X` and `ADM`
/// stay active.
#[tokio::test]
async fn a_dollar_outside_single_quotes_or_text_after_a_quote_stops_start_up() {
    let sim = dollar_directory().await;
    // (line 5, the variable, text of the value that must not be echoed, a `$` case)
    let cases = [
        (
            "PROTECTED_USERS=\"ADM$X,OTHER\"",
            "PROTECTED_USERS",
            "ADM",
            true,
        ),
        ("PROTECTED_USERS=\"ADM$X\"", "PROTECTED_USERS", "ADM", true),
        ("PROTECTED_USERS=ADM$X", "PROTECTED_USERS", "ADM", true),
        (
            "PROTECTED_USERS=\"ADM${NOPE:-x}\"",
            "PROTECTED_USERS",
            "NOPE",
            true,
        ),
        (
            "DATABASE_URL=\"sqlite://pa$sword.db\"",
            "DATABASE_URL",
            "sword",
            true,
        ),
        (
            "SECRET_NOTE=\"s3cr3t\"value",
            "SECRET_NOTE",
            "s3cr3t",
            false,
        ),
    ];
    for (bad, name, value, dollar) in cases {
        let dir = tempfile::tempdir().expect("dir");
        let env = format!("{}{bad}\n", head4(&sim));
        std::fs::write(dir.path().join(".env"), env).expect("write .env");
        for args in [
            &["user", "--external-id", "ADM$X", "--dry-run"][..],
            &["user", "--external-id", "ADM$X"][..],
            &["user", "--external-id", "ADM"][..],
        ] {
            let (code, out, err) = run_in(dir.path(), args).await;
            assert_eq!(code, Some(78), "{bad}: {args:?}\n{out}\n{err}");
            assert!(out.is_empty(), "{bad}: nothing on stdout: {out}");
            assert!(
                err.contains(&format!(".env, line 5 ({name})")),
                "{bad}: {err}"
            );
            assert!(!err.contains(value), "{bad}: the value is echoed: {err}");
            if dollar {
                assert!(
                    err.contains("`$` outside single quotes") && err.contains("NAME='a$b'"),
                    "{bad}: says to single-quote: {err}"
                );
            } else {
                assert!(
                    err.contains("text follows the closing quote"),
                    "{bad}: {err}"
                );
            }
        }
        assert!(
            std::fs::read_dir(dir.path()).expect("dir").count() == 1,
            "{bad}: nothing but .env in the directory (no audit database)"
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.count(ResourceKind::Token, "POST"), 0, "no token");
    assert_eq!(stats.count(ResourceKind::Users, "GET"), 0, "no lookup");
    assert!(sim.users_by_external_id("ADM$X")[0].active);
    assert!(sim.users_by_external_id("ADM")[0].active);
}

/// A variable set on two lines (the first used to win silently): exit 78 naming
/// both lines and the variable, never either value; nobody is touched.
#[tokio::test]
async fn a_variable_set_twice_stops_start_up_naming_both_lines() {
    let sim = dollar_directory().await;
    let dir = tempfile::tempdir().expect("dir");
    let env = format!(
        "{}PROTECTED_USERS=DE0002\n# later\nexport PROTECTED_USERS=ADM\n",
        head4(&sim)
    );
    std::fs::write(dir.path().join(".env"), env).expect("write .env");
    let (code, out, err) = run_in(dir.path(), &["user", "--external-id", "DE0002"]).await;
    assert_eq!(code, Some(78), "{out}\n{err}");
    assert!(
        err.contains(".env, lines 5 and 7: PROTECTED_USERS is set twice"),
        "{err}"
    );
    assert!(!err.contains("DE0002") && !err.contains("=ADM"), "{err}");
    assert_eq!(sim.stats().count(ResourceKind::Token, "POST"), 0);
    assert!(sim.users_by_external_id("DE0002")[0].active);
}

/// `PROTECTED_USERS='ADM$X,OTHER'` (single quotes: literal) protects `ADM$X`,
/// in the plan and in a real run; `ADM`, which a substituted value would have
/// named, is not protected and is deactivated.
#[tokio::test]
async fn a_single_quoted_dollar_is_literal_and_protects_the_account() {
    let sim = dollar_directory().await;
    let dir = tempfile::tempdir().expect("dir");
    let env = format!("{}PROTECTED_USERS='ADM$X,OTHER'\n", head4(&sim));
    std::fs::write(dir.path().join(".env"), env).expect("write .env");

    let (_, out, err) = run_in(
        dir.path(),
        &[
            "user",
            "--external-id",
            "ADM$X",
            "--dry-run",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(
        out.contains("protected"),
        "the plan shows protected: {out}\n{err}"
    );

    let (code, out, err) = run_in(
        dir.path(),
        &["user", "--external-id", "ADM$X", "--format", "json"],
    )
    .await;
    assert_eq!(code, Some(1), "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["outcome"], "protected", "{out}");
    assert!(sim.users_by_external_id("ADM$X")[0].active);

    let (code, out, err) = run_in(
        dir.path(),
        &["user", "--external-id", "ADM", "--format", "json"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!sim.users_by_external_id("ADM")[0].active);
}
