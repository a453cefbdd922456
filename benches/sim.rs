//! Throughput of the Genesys Cloud SCIM simulator over real HTTP, so it is never
//! the bottleneck of a throughput benchmark (issue 3: at least 5,000 requests/s).
//! Each iteration sends a batch of requests with 64 in flight from a plain reqwest
//! client; criterion reports elements (requests) per second. Client and server
//! share the machine, so the figure is a lower bound for the server alone.
//!
//!     cargo bench --bench sim

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deprovision::sim::{RunningSim, Seed, SimConfig};
use futures::StreamExt;
use serde_json::{Value, json};

const BATCH: usize = 512;
const IN_FLIGHT: usize = 64;
const USERS: usize = 1000;

struct Bench {
    rt: tokio::runtime::Runtime,
    _sim: RunningSim,
    http: reqwest::Client,
    origin: String,
    token: String,
}

fn setup() -> Bench {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (sim, http, origin, token) = rt.block_on(async {
        let config = SimConfig::default()
            .with_seed(Seed::generate(USERS, 10))
            .with_client("primary", "primary-secret");
        let sim = RunningSim::start(config, "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("simulator starts");
        let origin = sim.base_url().as_str().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(IN_FLIGHT)
            .build()
            .expect("client");
        let v: Value = http
            .post(format!("{origin}/oauth/token"))
            .basic_auth("primary", Some("primary-secret"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("token request")
            .json()
            .await
            .expect("token body");
        let token = v["access_token"].as_str().expect("token").to_owned();
        (sim, http, origin, token)
    });
    Bench {
        rt,
        _sim: sim,
        http,
        origin,
        token,
    }
}

/// Sends `BATCH` requests built by `make(i)`, `IN_FLIGHT` at a time, and checks
/// every one succeeded (a benchmark of errors would measure nothing).
fn run_batch<F>(b: &Bench, make: F)
where
    F: Fn(usize) -> reqwest::RequestBuilder,
{
    b.rt.block_on(async {
        let ok = futures::stream::iter(0..BATCH)
            .map(|i| {
                let req = make(i).bearer_auth(&b.token);
                async move {
                    req.send()
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .filter(|ok| futures::future::ready(*ok))
            .count()
            .await;
        assert_eq!(ok, BATCH, "every request succeeds");
    });
}

fn user_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{:012}", i % USERS + 1)
}

fn throughput(c: &mut Criterion) {
    let b = setup();
    let mut g = c.benchmark_group("simulator");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));

    let users = format!("{}/api/v2/scim/v2/users", b.origin);
    g.bench_function("GET users?filter=externalId", |bch| {
        bch.iter(|| {
            run_batch(&b, |i| {
                b.http.get(&users).query(&[(
                    "filter",
                    format!("externalId eq \"EMP{:05}\"", i % USERS + 1),
                )])
            })
        })
    });
    g.bench_function("GET users/{id}", |bch| {
        bch.iter(|| run_batch(&b, |i| b.http.get(format!("{users}/{}", user_id(i)))))
    });
    let patch = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{ "op": "replace", "path": "title", "value": "bench" }],
    })
    .to_string();
    g.bench_function("PATCH users/{id}", |bch| {
        bch.iter(|| {
            run_batch(&b, |i| {
                b.http
                    .patch(format!("{users}/{}", user_id(i)))
                    .header("content-type", "application/scim+json")
                    .body(patch.clone())
            })
        })
    });
    g.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
