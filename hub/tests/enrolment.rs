//! Enrolment codes (issue 11): issued by the admin, kept hashed, exchanged once before they
//! expire for the store's (rotated) token and its signing key; a used, expired or unknown
//! code is refused with what to do; every issue, use and refusal is audited.

// Tests state their expectations with unwrap: a panic there is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::{call, register, spawn_hub, ADMIN};
use serde_json::{json, Value};

async fn audit_actions(hub: &bazaar_hub::startup::Hub, store: &str) -> Vec<(String, String)> {
    sqlx::query_as::<_, (String, String)>(
        "SELECT action, CAST(COALESCE(after_json, '') AS CHAR) FROM audit_log WHERE target = ? ORDER BY id",
    )
    .bind(store)
    .fetch_all(&hub.pool)
    .await
    .expect("the audit log")
}

#[tokio::test]
async fn a_code_is_issued_once_exchanged_once_and_every_step_is_audited() {
    let (hub, database) = spawn_hub("bz_enrol", |_| {}).await;

    // A store token may not issue codes; the admin may, for a store not registered yet.
    let other = register(&hub, "S9").await;
    let (status, _) = call(
        &hub,
        "POST",
        "/v1/stores/S1/enrolment",
        Some(&other.token),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, issued) = call(
        &hub,
        "POST",
        "/v1/stores/S1/enrolment",
        Some(ADMIN),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    let fields: Vec<&String> = issued.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["code", "expires_at", "store"]);
    assert_eq!(issued["store"], "S1");
    let code = issued["code"].as_str().unwrap().to_owned();
    let expires =
        chrono::DateTime::parse_from_rfc3339(issued["expires_at"].as_str().unwrap()).unwrap();
    let hours =
        (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes() as f64 / 60.0;
    assert!((23.9..=24.0).contains(&hours), "{hours}");

    // Only the hash is kept.
    let kept: Vec<String> =
        sqlx::query_scalar("SELECT code_hash FROM enrolment_codes WHERE store = 'S1'")
            .fetch_all(&hub.pool)
            .await
            .unwrap();
    assert_eq!(kept.len(), 1);
    assert!(!kept[0].contains(&code) && !kept[0].contains(&code.replace('-', "")));

    // The wrong store, or a code never issued: unknown, and what to do.
    let (status, body) = call(
        &hub,
        "POST",
        "/v1/enrol",
        None,
        Some(json!({"store": "S9", "code": code})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = call(
        &hub,
        "POST",
        "/v1/enrol",
        None,
        Some(json!({"store": "S1", "code": "AAAAA-BBBBB-CCCCC-DDDDD"})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bazaar-hub store add S1 --enrolment"),
        "{body}"
    );

    // The exchange, typed back in lower case without dashes: the token works, the key is the store's.
    let typed = code.to_lowercase().replace('-', "");
    let (status, creds) = call(
        &hub,
        "POST",
        "/v1/enrol",
        None,
        Some(json!({"store": "S1", "code": typed})),
    )
    .await;
    assert_eq!(status, 200, "{creds}");
    let token = creds["token"].as_str().unwrap();
    let key: String = sqlx::query_scalar("SELECT signing_key FROM stores WHERE id = 'S1'")
        .fetch_one(&hub.pool)
        .await
        .unwrap();
    assert_eq!(creds["key"], Value::String(key));
    let (status, health) = call(&hub, "GET", "/v1/stores/S1", Some(token), None).await;
    assert_eq!(status, 200, "{health}");

    // Once only.
    let (status, body) = call(
        &hub,
        "POST",
        "/v1/enrol",
        None,
        Some(json!({"store": "S1", "code": code})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "code_used");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("already used") && message.contains("--enrolment"),
        "{message}"
    );

    let actions = audit_actions(&hub, "S1").await;
    let names: Vec<&str> = actions.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        names,
        [
            "store.register",
            "enrolment.issue",
            "enrolment.refused",
            "enrolment.use",
            "enrolment.refused"
        ],
        "{actions:?}"
    );
    assert!(
        actions[2].1.contains("unknown") && actions[4].1.contains("used"),
        "{actions:?}"
    );
    assert!(actions
        .iter()
        .all(|(_, after)| !after.contains(&code) && !after.contains(token)));
    assert_eq!(
        audit_actions(&hub, "S9").await.last().unwrap().0,
        "enrolment.refused"
    );

    common::drop_database(&hub, &database).await;
}

#[tokio::test]
async fn an_expired_code_is_refused_and_a_new_one_rotates_the_token() {
    let (hub, database) = spawn_hub("bz_enrol", |_| {}).await;
    let first = register(&hub, "S2").await;

    let (status, body) = call(
        &hub,
        "POST",
        "/v1/stores/S2/enrolment",
        Some(ADMIN),
        Some(json!({"valid_hours": 0})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, issued) = call(
        &hub,
        "POST",
        "/v1/stores/S2/enrolment",
        Some(ADMIN),
        Some(json!({"valid_hours": 1})),
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    sqlx::query(
        "UPDATE enrolment_codes SET expires_at = NOW(6) - INTERVAL 1 MINUTE WHERE store = 'S2'",
    )
    .execute(&hub.pool)
    .await
    .unwrap();
    let (status, body) = call(
        &hub,
        "POST",
        "/v1/enrol",
        None,
        Some(json!({"store": "S2", "code": issued["code"]})),
    )
    .await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "code_expired");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    // A fresh code for a registered store: the exchange rotates its token.
    let (_, issued) = call(
        &hub,
        "POST",
        "/v1/stores/S2/enrolment",
        Some(ADMIN),
        Some(json!({})),
    )
    .await;
    let (status, creds) = call(
        &hub,
        "POST",
        "/v1/enrol",
        None,
        Some(json!({"store": "S2", "code": issued["code"]})),
    )
    .await;
    assert_eq!(status, 200, "{creds}");
    assert_eq!(creds["key"].as_str().unwrap(), first.key.to_base64());
    let (status, _) = call(&hub, "GET", "/v1/stores/S2", Some(&first.token), None).await;
    assert_eq!(status, 401, "the registration's token no longer works");
    let (status, _) = call(
        &hub,
        "GET",
        "/v1/stores/S2",
        Some(creds["token"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 200);

    let names: Vec<String> = audit_actions(&hub, "S2")
        .await
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(
        names,
        [
            "store.register",
            "enrolment.issue",
            "enrolment.refused",
            "enrolment.issue",
            "enrolment.use"
        ]
    );
    common::drop_database(&hub, &database).await;
}

#[tokio::test]
async fn two_servers_racing_with_one_code_get_one_success() {
    let (hub, database) = spawn_hub("bz_enrol", |_| {}).await;
    let (_, issued) = call(
        &hub,
        "POST",
        "/v1/stores/S3/enrolment",
        Some(ADMIN),
        Some(json!({})),
    )
    .await;
    let body = json!({"store": "S3", "code": issued["code"]});
    let attempts = (0..6).map(|_| call(&hub, "POST", "/v1/enrol", None, Some(body.clone())));
    let mut statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409, 409, 409, 409, 409]);
    common::drop_database(&hub, &database).await;
}
