//! Contract tests of the Genesys Cloud SCIM simulator, over real HTTP with a
//! plain reqwest client (never the project's SCIM client): one test per
//! behaviour of issue 3. `generic` runs the RFC-generic cases against both the
//! simulator and scim2-server, so the simulator is held to an independent
//! implementation. Every test starts its own simulator on port 0.

mod cli;
mod control;
mod generic;
mod groups;
mod oauth;
mod switches;
mod users;

use deprovision::sim::{RunningSim, SimConfig};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

/// The PatchOp schema URN.
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// The ScimError schema URN.
pub const SCIM_ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// A configuration with the two clients the command line names.
pub fn config() -> SimConfig {
    SimConfig::default()
        .with_client("primary", "primary-secret")
        .with_elevated_client("elevated", "elevated-secret")
}

/// The id of generated user `n` (`Seed::generate`).
pub fn uid(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// The id of generated group `n`.
pub fn gid(n: usize) -> String {
    format!("00000000-0000-4000-9000-{n:012}")
}

/// A PatchOp body.
pub fn patch_op(ops: Value) -> Value {
    json!({ "schemas": [PATCH_OP], "Operations": ops })
}

/// A running simulator with a plain HTTP client.
pub struct Sim {
    pub sim: RunningSim,
    pub http: Client,
    /// `http://127.0.0.1:port` (no trailing slash).
    pub origin: String,
}

impl Sim {
    pub async fn start(config: SimConfig) -> Self {
        let sim = RunningSim::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("simulator starts");
        let origin = sim.base_url().as_str().trim_end_matches('/').to_owned();
        Self {
            sim,
            http: Client::new(),
            origin,
        }
    }

    /// `origin + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// A SCIM resource URL: `origin/api/v2/scim/v2/{rel}`.
    pub fn scim(&self, rel: &str) -> String {
        format!("{}/api/v2/scim/v2/{rel}", self.origin)
    }

    /// A token for `id:secret` by HTTP Basic; panics unless 200.
    pub async fn token_for(&self, id: &str, secret: &str) -> String {
        let r = self
            .http
            .post(self.url("/oauth/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "token for {id}");
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    /// A primary client token.
    pub async fn primary(&self) -> String {
        self.token_for("primary", "primary-secret").await
    }

    /// An elevated client token.
    pub async fn elevated(&self) -> String {
        self.token_for("elevated", "elevated-secret").await
    }

    /// `GET scim(rel)` with a token.
    pub async fn get(&self, token: &str, rel: &str) -> Response {
        self.http
            .get(self.scim(rel))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// `GET users` with a filter (and optional extra query pairs).
    pub async fn list_users(
        &self,
        token: &str,
        filter: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Response {
        let mut q: Vec<(&str, &str)> = extra.to_vec();
        if let Some(f) = filter {
            q.push(("filter", f));
        }
        self.http
            .get(self.scim("users"))
            .bearer_auth(token)
            .query(&q)
            .send()
            .await
            .unwrap()
    }

    /// `PATCH scim(rel)` with a PatchOp body as `application/scim+json`.
    pub async fn patch(&self, token: &str, rel: &str, body: &Value) -> Response {
        self.http
            .patch(self.scim(rel))
            .bearer_auth(token)
            .header("content-type", "application/scim+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// PATCH `users/{id}` with `active=false`.
    pub async fn deactivate(&self, token: &str, id: &str) -> Response {
        self.patch(
            token,
            &format!("users/{id}"),
            &patch_op(json!([{ "op": "replace", "path": "active", "value": false }])),
        )
        .await
    }
}

/// Reads a JSON body.
pub async fn body(r: Response) -> Value {
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts a platform ErrorBody (numeric `status`, `code`, `message`,
/// `contextId` equal to the correlation header); returns its `code`.
pub async fn assert_platform_error(r: Response, status: u16) -> String {
    assert_eq!(r.status().as_u16(), status);
    let corr = r
        .headers()
        .get("inin-correlation-id")
        .expect("correlation id")
        .to_str()
        .unwrap()
        .to_owned();
    let v = body(r).await;
    assert_eq!(v["status"], json!(status), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(v["contextId"], json!(corr), "{v}");
    v["code"].as_str().expect("code").to_owned()
}

/// Asserts a ScimError (`schemas`, `status` as a string); returns `scimType`.
pub async fn assert_scim_error(r: Response, status: u16) -> Option<String> {
    assert_eq!(r.status().as_u16(), status);
    let v = body(r).await;
    assert_eq!(v["schemas"], json!([SCIM_ERROR]), "{v}");
    assert_eq!(v["status"], json!(status.to_string()), "{v}");
    assert!(v["detail"].as_str().is_some(), "{v}");
    v["scimType"].as_str().map(str::to_owned)
}

/// The `id`s of a ListResponse's resources.
pub fn ids(list: &Value) -> Vec<String> {
    list["Resources"]
        .as_array()
        .expect("Resources")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}
