//! The hub's HTTP API against the real MariaDB, driven through warp::test (no socket):
//! each test gets a fresh database (zero-to-production's spawn_app pattern).

mod common;

use std::sync::Arc;

use bazaar_hub::startup::Hub;
use common::ADMIN;
use serde_json::{json, Value};

struct App {
    hub: Arc<Hub>,
    database: String,
}

async fn spawn_app() -> App {
    let (hub, database) = common::spawn_hub("bz_hubapi", |_| {}).await;
    App { hub, database }
}

impl App {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        common::call(&self.hub, method, path, token, body).await
    }

    async fn register(&self, store: &str) -> String {
        common::register(&self.hub, store).await.token
    }

    async fn cleanup(self) {
        common::drop_database(&self.hub, &self.database).await;
    }
}

#[tokio::test]
async fn registration_shows_credentials_once_and_is_audited() {
    let app = spawn_app().await;
    let (status, body) = app
        .call(
            "POST",
            "/v1/stores",
            Some(ADMIN),
            Some(json!({"store": "S1", "name": "High St"})),
        )
        .await;
    assert_eq!(status, 201);
    assert!(body["token"].as_str().unwrap().len() > 40);
    assert_eq!(
        bazaar_shared::SigningKey::from_base64(body["key"].as_str().unwrap()).is_ok(),
        true
    );
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM stores WHERE id = 'S1'")
        .fetch_one(&app.hub.pool)
        .await
        .unwrap();
    assert_ne!(
        stored,
        body["token"].as_str().unwrap(),
        "tokens are stored hashed"
    );
    let (status, again) = app
        .call(
            "POST",
            "/v1/stores",
            Some(ADMIN),
            Some(json!({"store": "S1"})),
        )
        .await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'store.register' AND target = 'S1'",
    )
    .fetch_one(&app.hub.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn the_auth_matrix_holds_on_every_store_route() {
    let app = spawn_app().await;
    let own = app.register("S1").await;
    let other = app.register("S2").await;
    sqlx::query("INSERT INTO stock (store, sku, on_hand, version, updated_at) VALUES ('S1', 'MILK', 7, 3, NOW(6))")
        .execute(&app.hub.pool).await.unwrap();
    for path in [
        "/v1/stores/S1",
        "/v1/stores/S1/stock/MILK",
        "/get-stock/S1/MILK",
    ] {
        assert_eq!(
            app.call("GET", path, Some(ADMIN), None).await.0,
            200,
            "admin on {path}"
        );
        assert_eq!(
            app.call("GET", path, Some(&own), None).await.0,
            200,
            "own store on {path}"
        );
        let (status, body) = app.call("GET", path, Some(&other), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "other store on {path}"
        );
        assert_eq!(
            app.call("GET", path, None, None).await.0,
            401,
            "no token on {path}"
        );
        assert_eq!(
            app.call("GET", path, Some("forged"), None).await.0,
            401,
            "unknown token on {path}"
        );
    }
    assert_eq!(
        app.call(
            "POST",
            "/v1/stores",
            Some(&own),
            Some(json!({"store": "S9"}))
        )
        .await
        .0,
        403,
        "stores cannot register stores"
    );
    let (_, figure) = app
        .call("GET", "/v1/stores/S1/stock/MILK", Some(&own), None)
        .await;
    assert_eq!(
        (figure["on_hand"].as_i64(), figure["version"].as_i64()),
        (Some(7), Some(3))
    );
    let (_, seed) = app
        .call("GET", "/get-stock/S1/MILK", Some(ADMIN), None)
        .await;
    assert_eq!(
        (&seed["store_id"], &seed["product_id"], &seed["quantity"]),
        (&json!("S1"), &json!("MILK"), &json!(7)),
        "{seed}"
    );
    // Read before, so Redis has it (tests/cache_and_limits.rs covers both sources).
    assert!(
        seed["source"] == "cache" || seed["source"] == "database",
        "{seed}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn unknown_and_invalid_identifiers_get_the_right_status() {
    let app = spawn_app().await;
    app.register("S1").await;
    sqlx::query("INSERT INTO stock (store, sku, on_hand, version, updated_at) VALUES ('S1', 'MILK', 7, 1, NOW(6))")
        .execute(&app.hub.pool).await.unwrap();
    let cases = [
        ("/v1/stores/NOPE", 404),
        ("/v1/stores/NOPE/stock/MILK", 404),
        ("/v1/stores/S1/stock/UNKNOWN-SKU", 404),
        ("/v1/stores/bad%20id", 422),
        ("/v1/stores/S1/stock/bad%20sku", 422),
        ("/get-stock/S1/bad%20sku", 422),
        ("/no/such/route", 404),
    ];
    for (path, expected) in cases {
        let (status, body) = app.call("GET", path, Some(ADMIN), None).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    app.register("S2").await;
    let (status, body) = app
        .call("GET", "/v1/stores/S2/stock/MILK", Some(ADMIN), None)
        .await;
    assert_eq!(
        (status, body["on_hand"].as_i64(), body["version"].as_i64()),
        (200, Some(0), Some(0)),
        "a known sku that never moved here is 0"
    );
    let (status, _) = app
        .call(
            "POST",
            "/v1/stores",
            Some(ADMIN),
            Some(json!({"store": "S3", "colour": "red"})),
        )
        .await;
    assert_eq!(status, 400, "unknown fields are refused");
    let stores: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stores")
        .fetch_one(&app.hub.pool)
        .await
        .unwrap();
    assert_eq!(stores, 2, "rejected requests changed nothing");
    app.cleanup().await;
}
