//! The harness the hub's API tests share (zero-to-production's `tests/api/helpers.rs`):
//! a hub built against a database of its own on the machine's MariaDB, with a Redis prefix
//! of its own, driven through warp::test (no socket).
//!
//! Invariants: every hub gets a fresh database name, so tests never see each other's rows;
//! the get-stock rate limit is off (tests/cache_and_limits.rs covers it with a private
//! Redis); a test's own configuration differences are applied by its `tweak` closure last,
//! so they win over these defaults.

// Each test crate includes this module and uses only part of it.
#![allow(dead_code)]

use std::sync::Arc;

use bazaar_hub::config::{FileConfig, HubConfig, Secret};
use bazaar_hub::startup::{build, Hub};
use bazaar_shared::SigningKey;
use serde_json::{json, Value};

pub const ADMIN: &str = "test-admin";

/// A database name no other test uses: `{prefix}_` and the random tail of a UUIDv7.
pub fn fresh_database(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

/// The test configuration for `database`, after `tweak` has had its say.
pub fn config(database: &str, tweak: impl FnOnce(&mut FileConfig)) -> HubConfig {
    let mut file = FileConfig {
        mysql_url: Some(Secret::new(format!(
            "mysql://root@127.0.0.1:3306/{database}"
        ))),
        admin_token: Some(Secret::new(ADMIN)),
        redis_prefix: Some(format!("{database}:")),
        rate_limit_get_stock: Some(0),
        ..FileConfig::default()
    };
    tweak(&mut file);
    HubConfig::from_layers(file, |_| None).expect("a valid configuration")
}

/// A hub on a fresh database named after `prefix`; returns it and the database name.
pub async fn spawn_hub(prefix: &str, tweak: impl FnOnce(&mut FileConfig)) -> (Arc<Hub>, String) {
    let database = fresh_database(prefix);
    let hub = build(config(&database, tweak))
        .await
        .expect("hub builds against MariaDB");
    (hub, database)
}

/// What the routes answered.
pub struct Reply {
    pub status: u16,
    pub headers: warp::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON, `Null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One request through all of the hub's routes, with a bearer `token` when given.
pub async fn request(
    hub: &Arc<Hub>,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut request = warp::test::request().method(method).path(path);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(b) = body {
        request = request.body(b.to_owned());
    }
    let response = request.reply(&bazaar_hub::api::routes(hub.clone())).await;
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.body().to_vec(),
    }
}

/// A request with an optional JSON body; the status and the JSON answer.
pub async fn call(
    hub: &Arc<Hub>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let reply = request(hub, method, path, token, &[], body.as_deref()).await;
    (reply.status, reply.json())
}

/// A store's credentials, shown once at registration.
pub struct Registered {
    pub token: String,
    pub key: SigningKey,
}

/// Registers `store` as the admin; the registration must succeed.
pub async fn register(hub: &Arc<Hub>, store: &str) -> Registered {
    let (status, body) = call(
        hub,
        "POST",
        "/v1/stores",
        Some(ADMIN),
        Some(json!({ "store": store })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    Registered {
        token: body["token"].as_str().expect("token").to_owned(),
        key: SigningKey::from_base64(body["key"].as_str().expect("key")).expect("a key"),
    }
}

/// Drops the test's database; best effort, a leftover only costs disk.
pub async fn drop_database(hub: &Hub, database: &str) {
    let _ = sqlx::query(&format!("DROP DATABASE `{database}`"))
        .execute(&hub.pool)
        .await;
}

/// The hub's on-hand figure for (store, sku), if it has a stock row.
pub async fn on_hand(hub: &Hub, store: &str, sku: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT on_hand FROM stock WHERE store = ? AND sku = ?")
        .bind(store)
        .bind(sku)
        .fetch_optional(&hub.pool)
        .await
        .expect("the stock table")
}
