//! Manifest reading and dispatch speed and memory.
//!
//! - `manifest/read/{format}/100000`: parse + validate + collapse duplicates of a
//!   100,000-record file (criterion, records/s).
//! - `dispatch/100000`: the whole dispatcher on a local 100,000-record JSON
//!   manifest (both passes, message encoding, batches of ten) into a queue that
//!   discards what it is sent, so the queue's own memory is not measured.
//! - Peak RSS (printed before the criterion runs): the peak resident set growth
//!   of one dispatch of 100,000 and of 1,000,000 records, reset between runs with
//!   Linux's `/proc/self/clear_refs` (5), to show memory does not follow the file
//!   size: the validation pass alone stays flat; the dispatch grows only by the
//!   duplicate set (16 bytes per distinct termination in a pre-sized table).
//!
//! Run: `cargo bench --bench manifest`.

use std::io::Write;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use deprovision::audit::AuditEntry;
use deprovision::consume::AuditSink;
use deprovision::dispatch::{DispatchOptions, Dispatcher, ManifestSource};
use deprovision::domain::{IdempotencyKey, Outcome};
use deprovision::manifest::{self, Format};
use deprovision::queue::{
    EntryFailure, OutgoingMessage, Queue, QueueError, QueueSettings, ReceivedMessage,
};

/// A queue that counts what it is sent and keeps nothing.
#[derive(Clone, Default)]
struct Discard(Arc<AtomicU64>);

impl Queue for Discard {
    fn name(&self) -> &str {
        "discard"
    }
    fn settings(&self) -> QueueSettings {
        QueueSettings {
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: None,
        }
    }
    async fn receive(&self, _: u32, _: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
        Ok(Vec::new())
    }
    async fn send_batch(&self, m: &[OutgoingMessage]) -> Result<Vec<EntryFailure>, QueueError> {
        self.0.fetch_add(m.len() as u64, Ordering::Relaxed);
        Ok(Vec::new())
    }
    async fn delete_batch(&self, _: &[String]) -> Result<Vec<EntryFailure>, QueueError> {
        Ok(Vec::new())
    }
    async fn change_visibility(&self, _: &str, _: Duration) -> Result<(), QueueError> {
        Ok(())
    }
}

/// An audit sink that keeps nothing.
struct NoAudit;

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl AuditSink for NoAudit {
    type Error = Never;
    async fn append(&self, _: &AuditEntry) -> Result<i64, Never> {
        Ok(0)
    }
    async fn latest_terminal_outcome(&self, _: &IdempotencyKey) -> Result<Option<Outcome>, Never> {
        Ok(None)
    }
}

/// Writes an n-record manifest: every 1,000th record a duplicate, every
/// 10,000th invalid.
fn write_manifest(n: usize, format: Format) -> tempfile::NamedTempFile {
    let ext = match format {
        Format::JsonArray => ".json",
        Format::Ndjson => ".ndjson",
        Format::Csv => ".csv",
    };
    let mut file = tempfile::Builder::new()
        .suffix(ext)
        .tempfile()
        .expect("temp file");
    let mut w = std::io::BufWriter::new(file.as_file_mut());
    let id = |i: usize| {
        if i % 1000 == 999 { i - 1 } else { i }
    };
    let date = |i: usize| {
        if i % 10_000 == 9_999 {
            "03/02/2026"
        } else {
            "2026-03-02"
        }
    };
    match format {
        Format::Csv => {
            writeln!(w, "externalId,userId,terminationDate").expect("write");
            for i in 0..n {
                writeln!(w, "EMP{:08},,{}", id(i), date(i)).expect("write");
            }
        }
        Format::Ndjson => {
            for i in 0..n {
                writeln!(
                    w,
                    "{{\"externalId\":\"EMP{:08}\",\"terminationDate\":\"{}\"}}",
                    id(i),
                    date(i)
                )
                .expect("write");
            }
        }
        Format::JsonArray => {
            writeln!(w, "[").expect("write");
            for i in 0..n {
                let sep = if i + 1 == n { "" } else { "," };
                writeln!(
                    w,
                    "  {{\"externalId\":\"EMP{:08}\",\"terminationDate\":\"{}\"}}{sep}",
                    id(i),
                    date(i)
                )
                .expect("write");
            }
            writeln!(w, "]").expect("write");
        }
    }
    w.flush().expect("flush");
    drop(w);
    file
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn dispatch_once(rt: &tokio::runtime::Runtime, path: &std::path::Path) -> u64 {
    let sent = Discard::default();
    let d = Dispatcher::new(
        None,
        sent.clone(),
        Arc::new(NoAudit),
        DispatchOptions::default(),
    );
    let report = rt
        .block_on(d.dispatch(&ManifestSource::Local(path.to_owned()), 1))
        .expect("dispatch");
    assert_eq!(report.enqueued, sent.0.load(Ordering::Relaxed));
    report.enqueued
}

/// Peak RSS growth of one dispatch, for two sizes an order of magnitude apart.
fn rss_report() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("peak RSS growth of one dispatch (JSON array, local file, discarding queue):");
    for n in [100_000usize, 1_000_000] {
        let file = write_manifest(n, Format::JsonArray);
        let size = std::fs::metadata(file.path()).map(|m| m.len()).unwrap_or(0);
        let before = proc_status_kib("VmRSS:").unwrap_or(0);
        if !reset_peak_rss() {
            println!("  /proc/self/clear_refs not writable; peak RSS not measured");
            return;
        }
        let f = std::fs::File::open(file.path()).expect("open");
        let summary = manifest::validate(f, None).expect("validate");
        let after_validate = proc_status_kib("VmHWM:").unwrap_or(0);
        println!(
            "  {n:>9} records: validation pass alone (no duplicate set), {} records, peak RSS +{:.1} MiB",
            summary.records,
            after_validate.saturating_sub(before) as f64 / 1024.0
        );
        reset_peak_rss();
        let started = Instant::now();
        let enqueued = dispatch_once(&rt, file.path());
        let elapsed = started.elapsed();
        let peak = proc_status_kib("VmHWM:").unwrap_or(0);
        println!(
            "  {n:>9} records ({:>5.1} MiB file): {enqueued} enqueued in {:.2} s, peak RSS {:.1} MiB (+{:.1} MiB over {:.1} MiB before)",
            size as f64 / 1_048_576.0,
            elapsed.as_secs_f64(),
            peak as f64 / 1024.0,
            peak.saturating_sub(before) as f64 / 1024.0,
            before as f64 / 1024.0,
        );
    }
}

fn bench_read(c: &mut Criterion) {
    let n = 100_000;
    let mut group = c.benchmark_group("manifest/read");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    for format in [Format::JsonArray, Format::Ndjson, Format::Csv] {
        let file = write_manifest(n, format);
        group.bench_with_input(BenchmarkId::new(format.as_str(), n), &file, |b, file| {
            b.iter(|| {
                let f = std::fs::File::open(file.path()).expect("open");
                let mut valid = 0u64;
                let summary = manifest::read(f, Some(format), |e| {
                    if matches!(e, manifest::Entry::Valid { .. }) {
                        valid += 1;
                    }
                    ControlFlow::Continue(())
                })
                .expect("read");
                assert_eq!(summary.valid, valid);
                valid
            })
        });
    }
    group.finish();
}

fn bench_dispatch(c: &mut Criterion) {
    let n = 100_000;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let file = write_manifest(n, Format::JsonArray);
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    group.bench_function(BenchmarkId::from_parameter(n), |b| {
        b.iter(|| dispatch_once(&rt, file.path()))
    });
    group.finish();
}

criterion_group!(benches, bench_read, bench_dispatch);

fn main() {
    // Only under `cargo bench` (which passes --bench): not when a test runner
    // lists or smoke-runs this binary.
    if std::env::args().any(|a| a == "--bench") {
        rss_report();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
