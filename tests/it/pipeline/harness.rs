//! Shared parts of the pipeline tests: uniquely named S3 buckets and SQS queues
//! on moto (a real bucket notification to the manifest-events queue, a real
//! redrive policy on the terminations queue), a fresh PostgreSQL database, the
//! simulator seeded from a manifest, and the `deprovision` binary run as a child
//! process (stopped with a real SIGTERM).

use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
use aws_sdk_sqs::types::QueueAttributeName;
use deprovision::audit::{AuditStore, StoredRow};
use deprovision::domain::{ExternalId, Outcome, ScimUserId, TerminationRecord};
use deprovision::sim::{RunningSim, Seed, SimConfig};

use crate::support::required_env;

pub const PRIMARY: (&str, &str) = ("pipeline-primary", "pipeline-primary-secret");
pub const ELEVATED: (&str, &str) = ("pipeline-elevated", "pipeline-elevated-secret");
/// `MESSAGE_SIGNING_KEYS` of the binaries the tests run.
pub const SIGNING_KEYS: &str = "test-k1:0123456789abcdef0123456789abcdef0123456789abcdef";

/// The `deprovision` binary built for this test run.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_deprovision")
}

/// A short unique, lowercase name (valid for buckets and queues).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// S3 and SQS clients on moto (`$AWS_ENDPOINT_URL`).
#[derive(Clone)]
pub struct Aws {
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
}

pub async fn aws() -> Aws {
    required_env("AWS_ENDPOINT_URL");
    let config = deprovision::queue::sqs::load_aws_config().await;
    Aws {
        s3: deprovision::dispatch::s3_client(&config),
        sqs: aws_sdk_sqs::Client::new(&config),
    }
}

/// The three queues of one test.
#[derive(Debug, Clone)]
pub struct Queues {
    pub events: String,
    pub terminations: String,
    pub dead_letter: String,
}

impl Aws {
    async fn create_queue(&self, name: &str, attrs: &[(QueueAttributeName, String)]) -> String {
        let mut req = self.sqs.create_queue().queue_name(name);
        for (k, v) in attrs {
            req = req.attributes(k.clone(), v);
        }
        req.send()
            .await
            .expect("create queue on moto")
            .queue_url()
            .expect("queue url")
            .to_owned()
    }

    pub async fn queue_arn(&self, url: &str) -> String {
        self.sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("queue attributes")
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .expect("queue arn")
    }

    /// Events queue, terminations queue with a redrive policy
    /// (`max_receive_count`) to its own dead-letter queue.
    pub async fn queues(&self, max_receive_count: u32, visibility_secs: u32) -> Queues {
        let id = unique("pl");
        let dead_letter = self.create_queue(&format!("{id}-dlq"), &[]).await;
        let dlq_arn = self.queue_arn(&dead_letter).await;
        let policy = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}).to_string();
        let terminations = self
            .create_queue(
                &format!("{id}-terminations"),
                &[
                    (QueueAttributeName::RedrivePolicy, policy),
                    (
                        QueueAttributeName::VisibilityTimeout,
                        visibility_secs.to_string(),
                    ),
                ],
            )
            .await;
        let events = self
            .create_queue(
                &format!("{id}-events"),
                &[(QueueAttributeName::VisibilityTimeout, "60".into())],
            )
            .await;
        Queues {
            events,
            terminations,
            dead_letter,
        }
    }

    /// A new bucket named `prefix` plus a unique suffix.
    pub async fn bucket(&self, prefix: &str) -> String {
        let bucket = unique(prefix);
        self.s3
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("create bucket");
        bucket
    }

    /// A bucket whose ObjectCreated notifications go to `events_url` (moto sends
    /// an `s3:TestEvent` there first, as S3 does).
    pub async fn bucket_notifying(&self, events_url: &str) -> String {
        let bucket = self.bucket("hr-manifests").await;
        let arn = self.queue_arn(events_url).await;
        let config = NotificationConfiguration::builder()
            .queue_configurations(
                QueueConfiguration::builder()
                    .queue_arn(arn)
                    .events(Event::S3ObjectCreated)
                    .build()
                    .expect("queue configuration"),
            )
            .build();
        self.s3
            .put_bucket_notification_configuration()
            .bucket(&bucket)
            .notification_configuration(config)
            .send()
            .await
            .expect("bucket notification");
        bucket
    }

    pub async fn put(&self, bucket: &str, key: &str, body: impl Into<Vec<u8>>) {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body.into()))
            .send()
            .await
            .expect("put object");
    }

    /// Visible + in-flight + delayed messages.
    pub async fn depth(&self, url: &str) -> u64 {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .expect("queue depth");
        out.attributes()
            .map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0)
    }

    /// Every message on a queue, without hiding them (visibility 0), with its
    /// string attributes.
    pub async fn peek_all(&self, url: &str) -> Vec<(String, BTreeMap<String, String>)> {
        let mut seen = BTreeMap::new();
        for _ in 0..20 {
            let out = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .message_attribute_names("All")
                .send()
                .await
                .expect("receive");
            for m in out.messages() {
                let attrs = m
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default();
                seen.insert(
                    m.message_id().unwrap_or_default().to_owned(),
                    (m.body().unwrap_or_default().to_owned(), attrs),
                );
            }
        }
        seen.into_values().collect()
    }

    pub async fn send_raw(&self, url: &str, body: &str) {
        self.sqs
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .expect("send");
    }

    /// Sends `body` with string message `attributes` (e.g. a signature).
    pub async fn send_with_attributes(
        &self,
        url: &str,
        body: &str,
        attributes: &std::collections::BTreeMap<String, String>,
    ) {
        let attrs: std::collections::HashMap<String, aws_sdk_sqs::types::MessageAttributeValue> =
            attributes
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        aws_sdk_sqs::types::MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value(v)
                            .build()
                            .expect("attribute"),
                    )
                })
                .collect();
        self.sqs
            .send_message()
            .queue_url(url)
            .message_body(body)
            .set_message_attributes((!attrs.is_empty()).then_some(attrs))
            .send()
            .await
            .expect("send");
    }

    /// Sends `body` signed with [`SIGNING_KEYS`], as the dispatcher would.
    pub async fn send_signed(&self, url: &str, body: &str) {
        let ring = deprovision::signing::Keyring::parse(&secrecy::SecretString::from(
            SIGNING_KEYS.to_owned(),
        ))
        .expect("test signing keys");
        self.send_with_attributes(url, body, &ring.sign(body)).await;
    }
}

/// Polls `check` every 200 ms until it returns true; panics naming `what` after
/// `limit`. A guard against hanging, not a speed assertion: limits are generous.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Records `PL0001`… with one date in the past.
pub fn records(prefix: &str, n: usize) -> Vec<TerminationRecord> {
    (1..=n)
        .map(|i| TerminationRecord {
            external_id: ExternalId::parse(&format!("{prefix}{i:04}")).expect("id"),
            user_id: None,
            termination_date: deprovision::domain::TerminationDate::parse("2026-01-05")
                .expect("date"),
            action: deprovision::domain::RecordAction::Terminate,
        })
        .collect()
}

/// The simulator configuration for these records, with both test clients.
pub fn sim_config(records: &[TerminationRecord]) -> (SimConfig, Seed) {
    let seed = Seed::from_records(
        records
            .iter()
            .map(|r| (r.external_id.clone(), r.user_id.clone())),
    );
    let config = SimConfig::default()
        .with_seed(seed.clone())
        .with_client(PRIMARY.0, PRIMARY.1)
        .with_elevated_client(ELEVATED.0, ELEVATED.1);
    (config, seed)
}

/// The seeded user id of an externalId.
pub fn user_id_of(seed: &Seed, external_id: &str) -> String {
    seed.users
        .iter()
        .find(|u| u.external_id.as_deref() == Some(external_id))
        .map(|u| u.id.clone())
        .unwrap_or_else(|| panic!("{external_id} not seeded"))
}

pub async fn start_sim(config: SimConfig) -> RunningSim {
    RunningSim::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start simulator")
}

/// A port free right now on 127.0.0.1 (for a child's `HEALTH_ADDR`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The `HEALTH_ADDR` value in an environment from [`env_for`].
pub fn health_url(env: &[(String, String)], path: &str) -> String {
    let addr = env
        .iter()
        .rev()
        .find(|(k, _)| k == "HEALTH_ADDR")
        .map(|(_, v)| v.clone())
        .expect("HEALTH_ADDR");
    format!("http://{addr}{path}")
}

/// Environment for the binary: the simulator, the audit database, the queues.
pub fn env_for(sim: &RunningSim, database_url: &str, queues: &Queues) -> Vec<(String, String)> {
    let api = sim.base_url().to_string();
    let health = format!("127.0.0.1:{}", free_port());
    [
        ("GENESYS_API_URL", api.as_str()),
        ("PRIMARY_CLIENT_ID", PRIMARY.0),
        ("PRIMARY_CLIENT_SECRET", PRIMARY.1),
        ("ELEVATED_CLIENT_ID", ELEVATED.0),
        ("ELEVATED_CLIENT_SECRET", ELEVATED.1),
        ("DATABASE_URL", database_url),
        ("MANIFEST_EVENTS_QUEUE_URL", queues.events.as_str()),
        ("TERMINATIONS_QUEUE_URL", queues.terminations.as_str()),
        ("DEAD_LETTER_QUEUE_URL", queues.dead_letter.as_str()),
        ("HEALTH_ADDR", health.as_str()),
        ("RATE_LIMIT_PER_MINUTE", "60000"),
        ("CONCURRENCY", "8"),
        ("RETRY_BASE_SECS", "1"),
        ("ATTEMPT_TIMEOUT_SECS", "10"),
        ("HR_TIMEZONE", "UTC"),
        ("MESSAGE_SIGNING_KEYS", SIGNING_KEYS),
        // These tests' orgs are the manifest's people: the share check would
        // hold every manifest (tests/it/rails.rs covers the breaker).
        ("MAX_TERMINATIONS_SHARE", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// `deprovision serve` as a child process.
pub struct Service {
    child: tokio::process::Child,
}

impl Service {
    pub fn start(env: &[(String, String)]) -> Self {
        let child = tokio::process::Command::new(bin())
            .arg("serve")
            .envs(env.iter().cloned())
            .kill_on_drop(true)
            .spawn()
            .expect("start deprovision serve");
        Self { child }
    }

    /// Sends SIGTERM and waits for the process to end.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(Duration::from_secs(90), self.child.wait())
            .await
            .expect("serve exits after SIGTERM")
            .expect("wait for serve")
    }
}

/// Runs the binary to completion with `args` and `env`; returns status and
/// standard output.
/// Runs the binary with `args` and `env`; its status, stdout and stderr.
pub async fn run_full(args: &[&str], env: &[(String, String)]) -> (ExitStatus, String, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .await
        .expect("run deprovision");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub async fn run_bin(args: &[&str], env: &[(String, String)]) -> (ExitStatus, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .envs(env.iter().cloned())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .expect("run deprovision");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Terminal outcomes recorded per idempotency key (only termination rows).
pub async fn terminal_by_key(store: &AuditStore) -> BTreeMap<String, Vec<Outcome>> {
    let rows: Vec<StoredRow> = store.termination_rows(None, None).await.expect("rows");
    let mut by_key: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    for r in rows {
        if let Some(k) = &r.entry.idempotency_key
            && r.entry.outcome.is_terminal()
        {
            by_key
                .entry(k.as_str().to_owned())
                .or_default()
                .push(r.entry.outcome);
        }
    }
    by_key
}

/// The key every row of this externalId carries.
pub fn key_of(external_id: &str) -> String {
    TerminationRecord {
        external_id: ExternalId::parse(external_id).expect("id"),
        user_id: None::<ScimUserId>,
        termination_date: deprovision::domain::TerminationDate::parse("2026-01-05").expect("date"),
        action: deprovision::domain::RecordAction::Terminate,
    }
    .idempotency_key()
    .as_str()
    .to_owned()
}

/// A JSON array manifest of these records (`terminationDate` 2026-01-05).
pub fn json_manifest(records: &[TerminationRecord]) -> String {
    let items: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(r).expect("record json"))
        .collect();
    format!("[\n{}\n]\n", items.join(",\n"))
}
