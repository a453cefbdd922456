//! Telemetry of the real binary, end to end over real parts: moto's S3 and SQS,
//! `deprovision serve` as a child process, the Genesys Cloud simulator,
//! PostgreSQL for the audit, and the OTLP/HTTP receiver of `telemetry.rs`.
//! Checks that dispatch, termination and SCIM request spans form one trace per
//! termination with the right parent links, that the metrics arrive over OTLP
//! and on `/metrics`, that each termination ends in one JSON log line, and that
//! no client secret, bearer token, database password or signing key appears in
//! any output, error message, span or `Debug` rendering.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use clap::Parser;
use deprovision::config::{AuditArgs, ScimArgs};
use deprovision::domain::Outcome;
use deprovision::queue::attr;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use secrecy::ExposeSecret as _;

use crate::audit::{fresh_postgres, pg_url_for};
use crate::pipeline::harness::*;
use crate::support::required_env;
use crate::telemetry::{attributes, start_receiver};

const LIMIT: Duration = Duration::from_secs(180);

/// `deprovision <args>` as a child with `env`, standard output and error going
/// to files (a trace-level log is too large for a pipe nobody reads).
struct Child {
    child: tokio::process::Child,
    stdout: tempfile::NamedTempFile,
    stderr: tempfile::NamedTempFile,
}

impl Child {
    fn spawn(args: &[&str], env: &[(String, String)]) -> Self {
        let stdout = tempfile::NamedTempFile::new().expect("stdout file");
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let child = tokio::process::Command::new(bin())
            .args(args)
            .envs(env.iter().cloned())
            .stdout(Stdio::from(stdout.reopen().expect("reopen stdout")))
            .stderr(Stdio::from(stderr.reopen().expect("reopen stderr")))
            .kill_on_drop(true)
            .spawn()
            .expect("start deprovision");
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// SIGTERM, then the exit status.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -TERM {pid} failed");
        self.wait().await
    }

    async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(120), self.child.wait())
            .await
            .expect("deprovision exits")
            .expect("wait for deprovision")
    }

    fn output(&self) -> (String, String) {
        let read = |f: &tempfile::NamedTempFile| {
            String::from_utf8_lossy(&std::fs::read(f.path()).expect("read output")).into_owned()
        };
        (read(&self.stdout), read(&self.stderr))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans as a map by span id (hex), with their attributes.
fn by_id(spans: &[Span]) -> HashMap<String, (&Span, HashMap<String, String>)> {
    spans
        .iter()
        .map(|s| (hex(&s.span_id), (s, attributes(&s.attributes))))
        .collect()
}

/// The metrics of the last OTLP export (cumulative, so it holds every count).
fn last_metrics(
    bodies: &[bytes::Bytes],
) -> HashMap<String, opentelemetry_proto::tonic::metrics::v1::Metric> {
    let mut latest = HashMap::new();
    for body in bodies {
        let request = ExportMetricsServiceRequest::decode(body.clone()).expect("OTLP metrics");
        for resource in request.resource_metrics {
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    latest.insert(metric.name.clone(), metric);
                }
            }
        }
    }
    latest
}

fn sum_by(
    metric: &opentelemetry_proto::tonic::metrics::v1::Metric,
    label: &str,
) -> BTreeMap<String, i64> {
    let Some(Data::Sum(sum)) = &metric.data else {
        panic!("{} is not a sum: {metric:?}", metric.name)
    };
    sum.data_points
        .iter()
        .map(|p| {
            let value = match p.value {
                Some(number_data_point::Value::AsInt(i)) => i,
                other => panic!("not an integer: {other:?}"),
            };
            (attributes(&p.attributes)[label].clone(), value)
        })
        .collect()
}

fn histogram_count(metric: &opentelemetry_proto::tonic::metrics::v1::Metric) -> u64 {
    let Some(Data::Histogram(h)) = &metric.data else {
        panic!("{} is not a histogram: {metric:?}", metric.name)
    };
    h.data_points.iter().map(|p| p.count).sum()
}

/// Three terminations through `serve`: one the primary client may change, one
/// only the elevated client may (a 403 first), one no client may (forbidden,
/// dead-lettered). Every termination's spans hang under the one dispatch span:
/// dispatch → termination → deprovision → SCIM requests and limiter waits, one
/// trace id; the metrics arrive over OTLP after SIGTERM and are on `/metrics`.
#[tokio::test]
async fn a_served_manifest_is_one_trace_from_dispatch_to_scim_and_its_metrics_arrive() {
    let (collector, received) = start_receiver().await;
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket_notifying(&queues.events).await;
    let recs = records("TE", 3);
    let (config, seed) = sim_config(&recs);
    let elevated = user_id_of(&seed, "TE0002");
    let denied = user_id_of(&seed, "TE0003");
    let sim = start_sim(
        config
            .with_requires_elevated(&elevated)
            .with_denied(&denied),
    )
    .await;

    let mut env = env_for(&sim, &db.url, &queues);
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), collector.clone()));
    env.push(("OTEL_SERVICE_NAME".into(), "deprovision-e2e".into()));
    env.push(("LOG_FORMAT".into(), "json".into()));
    let metrics_url = health_url(&env, "/metrics");
    let mut service = Child::spawn(&["serve"], &env);
    aws.put(&bucket, "incoming/telemetry.json", json_manifest(&recs))
        .await;

    eventually(
        "three terminal outcomes and one dead letter",
        LIMIT,
        || async {
            terminal_by_key(&db.store).await.len() == 3 && aws.depth(&queues.dead_letter).await == 1
        },
    )
    .await;
    // The pool counts a termination once its message is deleted, just after
    // the audit row: wait for the counter, not only the row.
    let scrape = || async {
        match reqwest::get(&metrics_url).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    eventually("the outcome counters on /metrics", LIMIT, || async {
        let text = scrape().await;
        text.contains("deprovision_terminations_total{outcome=\"deactivated\"} 2")
            && text.contains("deprovision_terminations_total{outcome=\"forbidden\"} 1")
    })
    .await;
    let prometheus = scrape().await;
    for family in [
        "deprovision_scim_request_duration_seconds_count{method=\"PATCH\",resource=\"users\",status=\"200\"}",
        "deprovision_scim_request_duration_seconds_count{method=\"GET\",resource=\"users\",status=\"200\"}",
        "deprovision_rate_limit_wait_seconds_count",
        "deprovision_queue_lag_seconds_count{queue=\"terminations\"}",
        "deprovision_queue_lag_seconds_count{queue=\"manifest_events\"}",
        "deprovision_deactivation_delay_seconds_count 2",
    ] {
        assert!(
            prometheus.lines().any(|l| l.starts_with(family)),
            "no {family} in:\n{prometheus}"
        );
    }
    let status = service.terminate().await;
    assert!(status.success(), "serve exit status {status:?}");

    // The batch processor flushed on shutdown: every span is here now.
    let spans: Vec<Span> = received.spans().into_iter().map(|(s, _)| s).collect();
    let spans_by_id = by_id(&spans);
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let dispatch = named("dispatch");
    assert_eq!(dispatch.len(), 1, "one manifest, one dispatch span");
    let dispatch = dispatch[0];
    let trace = &dispatch.trace_id;
    assert!(dispatch.parent_span_id.is_empty(), "dispatch is a root");
    let dispatch_attrs = attributes(&dispatch.attributes);
    assert_eq!(
        dispatch_attrs["manifest"],
        format!("s3://{bucket}/incoming/telemetry.json")
    );
    assert_eq!(dispatch_attrs["enqueued"], "3");

    let terminations = named("termination");
    assert_eq!(terminations.len(), 3, "one span per received message");
    let mut outcomes = BTreeMap::new();
    for termination in &terminations {
        assert_eq!(
            &termination.trace_id, trace,
            "termination in the dispatch trace"
        );
        assert_eq!(termination.parent_span_id, dispatch.span_id);
        let attrs = attributes(&termination.attributes);
        for field in ["message_id", "idempotency_key", "attempt"] {
            assert!(attrs.contains_key(field), "{field} missing: {attrs:?}");
        }
        outcomes.insert(attrs["external_id"].clone(), attrs["outcome"].clone());

        // The engine's span is the termination's child, and every SCIM request
        // and limiter wait of this termination is the engine span's child.
        let engine: Vec<&Span> = spans
            .iter()
            .filter(|s| s.name == "deprovision" && s.parent_span_id == termination.span_id)
            .collect();
        assert_eq!(engine.len(), 1, "one engine span per termination");
        let requests: Vec<HashMap<String, String>> = spans
            .iter()
            .filter(|s| s.name == "scim.request" && s.parent_span_id == engine[0].span_id)
            .map(|s| {
                assert_eq!(&s.trace_id, trace);
                attributes(&s.attributes)
            })
            .collect();
        let waits = spans
            .iter()
            .filter(|s| s.name == "rate_limit.wait" && s.parent_span_id == engine[0].span_id)
            .count();
        assert!(
            requests.len() >= 2,
            "a lookup and a PATCH at least: {requests:?}"
        );
        assert!(
            waits >= requests.len(),
            "a limiter wait before each request"
        );
        for r in &requests {
            assert!(
                r["http.route"].starts_with("/Users") || r["http.route"].starts_with("/Groups")
            );
            assert!(!r["http.route"].contains(&elevated), "route carries no id");
            assert!(r.contains_key("http.response.status_code"), "{r:?}");
            assert!(
                r.get("correlation_id").is_some_and(|c| !c.is_empty()),
                "the simulator's ININ-Correlation-Id: {r:?}"
            );
        }
        match attrs["external_id"].as_str() {
            "TE0002" => {
                assert!(
                    requests
                        .iter()
                        .any(|r| r["credential"] == "primary"
                            && r["http.response.status_code"] == "403"),
                    "{requests:?}"
                );
                assert!(
                    requests.iter().any(|r| r["credential"] == "elevated"
                        && r["http.request.method"] == "PATCH"
                        && r["http.response.status_code"] == "200"),
                    "{requests:?}"
                );
            }
            "TE0003" => {
                assert!(attrs["reason"].contains("403"), "{attrs:?}");
            }
            _ => {}
        }
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("TE0001".to_owned(), "deactivated".to_owned()),
            ("TE0002".to_owned(), "deactivated".to_owned()),
            ("TE0003".to_owned(), "forbidden".to_owned()),
        ])
    );
    // Each OAuth client fetched its token once, inside a termination's trace.
    let tokens: Vec<HashMap<String, String>> = named("oauth.token")
        .into_iter()
        .map(|t| {
            assert_eq!(&t.trace_id, trace);
            let parent = &spans_by_id[&hex(&t.parent_span_id)].0;
            assert_eq!(parent.name, "deprovision");
            attributes(&t.attributes)
        })
        .collect();
    let mut clients: Vec<(&str, &str)> = tokens
        .iter()
        .map(|t| {
            (
                t["client_id"].as_str(),
                t["http.response.status_code"].as_str(),
            )
        })
        .collect();
    clients.sort();
    assert_eq!(clients, [(ELEVATED.0, "200"), (PRIMARY.0, "200")]);
    // Nothing of this run escaped the trace (the S3 test event and the SQS
    // long polls open no spans).
    for span in &spans {
        if span.trace_id != *trace {
            assert!(
                !["termination", "deprovision", "scim.request"].contains(&span.name.as_str()),
                "{} outside the dispatch trace",
                span.name
            );
        }
        if !span.parent_span_id.is_empty() && span.trace_id == *trace {
            assert!(
                spans_by_id.contains_key(&hex(&span.parent_span_id)),
                "{} has a parent that was not exported",
                span.name
            );
        }
    }
    assert_eq!(received.spans()[0].1["service.name"], "deprovision-e2e");

    // The dead letter carries the trace on, under the termination that
    // dead-lettered it, so a replay joins this trace.
    let forbidden = terminations
        .iter()
        .find(|t| attributes(&t.attributes)["external_id"] == "TE0003")
        .expect("TE0003's span");
    let dead = aws.peek_all(&queues.dead_letter).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].1.get("traceparent"),
        Some(&format!("00-{}-{}-01", hex(trace), hex(&forbidden.span_id))),
        "{:?}",
        dead[0].1
    );

    let metrics = last_metrics(&received.metrics.lock().unwrap().clone());
    let get = |name: &str| {
        metrics
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", metrics.keys()))
    };
    let outcomes = sum_by(get("deprovision.terminations"), "outcome");
    assert_eq!(outcomes.get("deactivated"), Some(&2), "{outcomes:?}");
    assert_eq!(outcomes.get("forbidden"), Some(&1), "{outcomes:?}");
    let scim = get("deprovision.scim.request.duration");
    assert_eq!(scim.unit, "s");
    let Some(Data::Histogram(h)) = &scim.data else {
        panic!("SCIM latency is not a histogram")
    };
    assert!(
        h.data_points.iter().any(|p| {
            let a = attributes(&p.attributes);
            a["resource"] == "users" && a["status"] == "403"
        }),
        "the refused requests are measured: {h:?}"
    );
    assert!(histogram_count(scim) >= 6);
    assert!(histogram_count(get("deprovision.rate_limit.wait")) >= histogram_count(scim));
    assert!(histogram_count(get("deprovision.queue.lag")) >= 3);
    assert_eq!(histogram_count(get("deprovision.deactivation.delay")), 2);
    assert!(!sim.user(&elevated).expect("user").active);
}

/// Known secrets for the leak test: distinctive enough that a hit is a leak.
struct Secrets {
    primary: String,
    elevated: String,
    db_password: String,
    signing_key: String,
    bearer: String,
}

impl Secrets {
    fn new() -> Self {
        let tag = || uuid::Uuid::new_v4().simple().to_string();
        Self {
            primary: format!("primary-SECRET-{}", tag()),
            elevated: format!("elevated-SECRET-{}", tag()),
            db_password: format!("dbpw-SECRET-{}", tag()),
            signing_key: format!("signing-SECRET-{}", tag()),
            bearer: required_env("TEST_SCIM2_TOKEN"),
        }
    }

    /// Every form a secret could leak in: raw, and the `Authorization: Basic`
    /// encoding of each OAuth client (`id:secret`, RFC 7617).
    fn needles(&self) -> Vec<(String, String)> {
        let basic = |id: &str, secret: &str| {
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        };
        vec![
            ("primary client secret".into(), self.primary.clone()),
            ("elevated client secret".into(), self.elevated.clone()),
            ("database password".into(), self.db_password.clone()),
            ("signing key".into(), self.signing_key.clone()),
            ("SCIM bearer token".into(), self.bearer.clone()),
            (
                "primary Basic credentials".into(),
                basic(PRIMARY.0, &self.primary),
            ),
            (
                "elevated Basic credentials".into(),
                basic(ELEVATED.0, &self.elevated),
            ),
        ]
    }

    fn assert_absent(&self, what: &str, text: &str) {
        for (name, needle) in self.needles() {
            assert!(
                !text.contains(&needle),
                "the {name} appears in {what}: {}",
                text.lines()
                    .find(|l| l.contains(&needle))
                    .unwrap_or_default()
            );
        }
    }
}

/// Every line is a JSON object (`LOG_FORMAT=json`); returns them parsed.
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect()
}

/// The `termination finished` lines, as (fields, span) pairs.
fn final_lines(lines: &[serde_json::Value]) -> Vec<(serde_json::Value, serde_json::Value)> {
    lines
        .iter()
        .filter(|l| l["fields"]["message"] == "termination finished")
        .map(|l| (l["fields"].clone(), l["span"].clone()))
        .collect()
}

/// An end-to-end pass with known secrets everywhere a secret goes — primary and
/// elevated client secrets (a 403 makes the elevated one used), a database
/// password in `DATABASE_URL`, `MESSAGE_SIGNING_KEYS`, a SCIM bearer token —
/// with `RUST_LOG=trace` JSON logs and spans exported; then failure paths: a
/// login server that refuses the client, and a SCIM service that refuses the
/// token. No secret appears in standard output or error, in any audit row's
/// error message, in a dead letter, in the exported spans, or in the `Debug`
/// output of the configuration; and each termination ends in one JSON line
/// with its message id, externalId and outcome.
#[tokio::test]
async fn no_secret_appears_in_logs_errors_spans_or_debug_output_of_a_traced_run() {
    let secrets = Secrets::new();
    let (collector, received) = start_receiver().await;
    let aws = aws().await;
    let db = fresh_postgres().await;
    let db_name = db.db_name.clone().expect("a PostgreSQL database");
    // The test cluster trusts local connections, so the password is carried
    // (and must be hidden) without being checked.
    let mut database_url = url::Url::parse(&pg_url_for(&db_name, None)).expect("database URL");
    database_url
        .set_password(Some(&secrets.db_password))
        .expect("URL with a host");
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket_notifying(&queues.events).await;
    let recs = records("TS", 3);
    let (_, seed) = sim_config(&recs);
    let config = deprovision::sim::SimConfig::default()
        .with_seed(seed.clone())
        .with_client(PRIMARY.0, secrets.primary.as_str())
        .with_elevated_client(ELEVATED.0, secrets.elevated.as_str())
        .with_requires_elevated(user_id_of(&seed, "TS0002"))
        .with_denied(user_id_of(&seed, "TS0003"));
    let sim = start_sim(config).await;

    let mut env = env_for(&sim, database_url.as_str(), &queues);
    let set = |env: &mut Vec<(String, String)>, k: &str, v: &str| {
        env.retain(|(name, _)| name != k);
        env.push((k.to_owned(), v.to_owned()));
    };
    set(&mut env, "PRIMARY_CLIENT_SECRET", &secrets.primary);
    set(&mut env, "ELEVATED_CLIENT_SECRET", &secrets.elevated);
    set(
        &mut env,
        "MESSAGE_SIGNING_KEYS",
        &format!("k1:{}", secrets.signing_key),
    );
    set(&mut env, "RUST_LOG", "trace");
    set(&mut env, "LOG_FORMAT", "json");
    set(&mut env, "OTEL_EXPORTER_OTLP_ENDPOINT", &collector);

    let mut service = Child::spawn(&["serve"], &env);
    aws.put(&bucket, "incoming/secrets.json", json_manifest(&recs))
        .await;
    eventually("three terminal outcomes", LIMIT, || async {
        terminal_by_key(&db.store).await.len() == 3 && aws.depth(&queues.dead_letter).await == 1
    })
    .await;
    let status = service.terminate().await;
    assert!(status.success(), "serve exit status {status:?}");
    let (stdout, stderr) = service.output();
    secrets.assert_absent("serve's standard output", &stdout);
    secrets.assert_absent("serve's trace-level log", &stderr);

    // One final JSON line per termination, carrying what an operator searches by.
    let lines = json_lines(&stderr);
    assert!(
        lines.len() > 100,
        "a trace-level log: {} lines",
        lines.len()
    );
    let finals = final_lines(&lines);
    let mut seen: Vec<(String, String)> = finals
        .iter()
        .map(|(fields, span)| {
            assert!(
                fields["message_id"].as_str().is_some_and(|m| !m.is_empty()),
                "{fields}"
            );
            assert_eq!(span["name"], "termination", "{span}");
            assert_eq!(span["message_id"], fields["message_id"], "{span}");
            if fields["outcome"] == "forbidden" {
                assert_eq!(fields["step"], "dead_lettered");
                assert!(
                    span["reason"].as_str().is_some_and(|r| r.contains("403")),
                    "the reason is on the line: {span}"
                );
            }
            (
                fields["external_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                fields["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("TS0001".to_owned(), "deactivated".to_owned()),
            ("TS0002".to_owned(), "deactivated".to_owned()),
            ("TS0003".to_owned(), "forbidden".to_owned()),
        ]
    );

    // Error messages kept as evidence: the audit and the dead letter.
    let rows = db.store.termination_rows(None, None).await.expect("rows");
    assert!(rows.iter().any(|r| r.entry.outcome == Outcome::Forbidden));
    for row in &rows {
        secrets.assert_absent(
            "an audit row's error message",
            row.entry.error_message.as_deref().unwrap_or_default(),
        );
    }
    let dead = aws.peek_all(&queues.dead_letter).await;
    assert_eq!(dead.len(), 1);
    for (body, attrs) in &dead {
        secrets.assert_absent("a dead letter", &format!("{body} {attrs:?}"));
        assert_eq!(attrs[attr::REASON], "forbidden");
    }

    // Failure path 1: the login server refuses the client (its own secret is
    // different), so the run refuses to start with the server's reason.
    let refusing = start_sim(
        deprovision::sim::SimConfig::default()
            .with_client(PRIMARY.0, "another-secret")
            .with_elevated_client(ELEVATED.0, "another-secret"),
    )
    .await;
    // Each run its own people: a termination already finished is not retried.
    let manifest = |prefix: &str| {
        let file = tempfile::Builder::new()
            .suffix(".json")
            .tempfile()
            .expect("manifest file");
        std::fs::write(file.path(), json_manifest(&records(prefix, 2))).expect("write manifest");
        file
    };
    let (refused, accepted, wrong_token) = (manifest("TF"), manifest("TB"), manifest("TW"));
    let path = |f: &tempfile::NamedTempFile| f.path().to_str().expect("utf-8 path").to_owned();
    let mut run_env = env.clone();
    set(
        &mut run_env,
        "GENESYS_LOGIN_URL",
        refusing.base_url().as_str(),
    );
    set(&mut run_env, "OTEL_EXPORTER_OTLP_ENDPOINT", &collector);
    let mut run = Child::spawn(&["run", &path(&refused), "--format", "json"], &run_env);
    let status = run.wait().await;
    let (stdout, stderr) = run.output();
    assert_eq!(status.code(), Some(1), "a refused login exits 1: {stderr}");
    assert!(
        stderr.contains("refusing to start")
            && (stderr.contains("invalid_client") || stderr.contains("401")),
        "the error names the refusal: {stderr}"
    );
    secrets.assert_absent("a refused run's standard output", &stdout);
    secrets.assert_absent("a refused run's log", &stderr);
    assert!(
        !stderr.contains("termination finished"),
        "nobody was attempted: {stderr}"
    );

    // Failure path 2, and the bearer token: a generic SCIM service with the
    // right token, then with a wrong one.
    let tenant = unique("tel");
    let scim2 = format!("{}/{tenant}/", required_env("TEST_SCIM2_URL"));
    let mut scim_env: Vec<(String, String)> = run_env
        .iter()
        .filter(|(k, _)| !k.starts_with("GENESYS_") && !k.contains("CLIENT_"))
        .cloned()
        .collect();
    set(&mut scim_env, "SCIM_BASE_URL", &scim2);
    set(&mut scim_env, "SCIM_BEARER_TOKEN", &secrets.bearer);
    let mut run = Child::spawn(&["run", &path(&accepted), "--format", "json"], &scim_env);
    let status = run.wait().await;
    let (stdout, stderr) = run.output();
    assert!(status.success(), "not found is not a failure: {stdout}");
    assert!(stdout.contains("not_found"), "{stdout}");
    secrets.assert_absent(
        "a bearer-token run's output",
        &format!("{stdout}\n{stderr}"),
    );
    let wrong = format!("wrong-token-{}", uuid::Uuid::new_v4().simple());
    set(&mut scim_env, "SCIM_BEARER_TOKEN", &wrong);
    let mut run = Child::spawn(&["run", &path(&wrong_token), "--format", "json"], &scim_env);
    let status = run.wait().await;
    let (stdout, stderr) = run.output();
    assert_eq!(status.code(), Some(1), "a refused token fails: {stdout}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains(&wrong), "the refused token is shown");
        secrets.assert_absent("a refused-token run's output", text);
    }

    // Spans of all four processes.
    let traced = received.traces.lock().unwrap().clone();
    assert!(!traced.is_empty(), "spans were exported");
    assert!(
        received.spans().iter().any(|(s, _)| {
            let a = attributes(&s.attributes);
            s.name == "oauth.token"
                && a.get("client_id").map(String::as_str) == Some(PRIMARY.0)
                && a.get("http.response.status_code").map(String::as_str) == Some("401")
        }),
        "the refused token request is a span"
    );
    for body in &traced {
        let text = String::from_utf8_lossy(body);
        secrets.assert_absent("an exported span", &text);
        assert!(!text.contains(&wrong), "the refused token is in a span");
    }
    for body in received.metrics.lock().unwrap().iter() {
        secrets.assert_absent("exported metrics", &String::from_utf8_lossy(body));
    }

    // Debug output of the configuration and of what it builds.
    #[derive(Debug, Parser)]
    struct Settings {
        #[command(flatten)]
        scim: ScimArgs,
        #[command(flatten)]
        audit: AuditArgs,
    }
    let settings = Settings::try_parse_from([
        "deprovision",
        "--genesys-api-url",
        sim.base_url().as_str(),
        "--primary-client-id",
        PRIMARY.0,
        "--primary-client-secret",
        &secrets.primary,
        "--elevated-client-id",
        ELEVATED.0,
        "--elevated-client-secret",
        &secrets.elevated,
        "--database-url",
        database_url.as_str(),
    ])
    .expect("settings parse");
    assert_eq!(
        settings.audit.database_url.expose_secret(),
        database_url.as_str()
    );
    let target = settings.scim.target().expect("target");
    let engine = deprovision::engine::Engine::from_args(&settings.scim).expect("engine");
    let static_target = Settings::try_parse_from([
        "deprovision",
        "--scim-base-url",
        &scim2,
        "--scim-bearer-token",
        &secrets.bearer,
    ])
    .expect("settings parse")
    .scim
    .target()
    .expect("static target");
    for (what, debug) in [
        ("the settings", format!("{settings:?} {settings:#?}")),
        ("the SCIM target", format!("{target:?} {static_target:?}")),
        ("the engine", format!("{engine:?} {:?}", engine.client())),
    ] {
        secrets.assert_absent(&format!("the Debug output of {what}"), &debug);
    }
}

/// The embedded `run` (in-process queue) is one trace too: the in-process
/// queue carries the message attributes, so every termination of the example
/// manifest is a child of its dispatch span; `RUST_LOG=warn` hides the log
/// lines but not the spans.
#[tokio::test]
async fn an_embedded_run_is_one_trace_through_the_in_process_queue() {
    let (collector, received) = start_receiver().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/terminations.json");
    let out = tokio::process::Command::new(bin())
        .args(["run", "--sandbox", "--format", "json"])
        .arg(&example)
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run");
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("termination finished"),
        "RUST_LOG=warn hides info lines"
    );

    let spans: Vec<Span> = received.spans().into_iter().map(|(s, _)| s).collect();
    let dispatch: Vec<&Span> = spans.iter().filter(|s| s.name == "dispatch").collect();
    assert_eq!(dispatch.len(), 1);
    let terminations: Vec<&Span> = spans.iter().filter(|s| s.name == "termination").collect();
    // Ten records: one invalid, one duplicate, eight terminations.
    assert_eq!(terminations.len(), 8);
    for t in &terminations {
        assert_eq!(t.trace_id, dispatch[0].trace_id);
        assert_eq!(t.parent_span_id, dispatch[0].span_id);
        assert_eq!(attributes(&t.attributes)["outcome"], "deactivated");
    }
    let requests = spans.iter().filter(|s| s.name == "scim.request").count();
    assert!(requests >= 16, "{requests} SCIM request spans");
    assert!(
        spans
            .iter()
            .filter(|s| s.name == "scim.request")
            .all(|s| s.trace_id == dispatch[0].trace_id)
    );
}
