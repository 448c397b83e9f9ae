//! `/openapi.json` against the routes the hub really serves: every route in the table
//! below must answer (it is not warp's "no such route") and be in the document; every
//! operation in the document must be in the table; and on every path of the table, and
//! every path the design names, any method that answers must be documented too. A new route therefore fails this test
//! until its module's `docs()` describes it (and it is added to the table).
//!
//! Routes are driven through warp::test against a fresh MariaDB database, with the admin
//! token and no body, so a route that is reached answers with its own status (400, 404,
//! 422, ...), never the router's 404 or 405.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use bazaar_hub::startup::Hub;
use common::ADMIN;
use serde_json::Value;

/// Every route `api::routes` serves: (method, OpenAPI path template).
const SERVED: &[(&str, &str)] = &[
    // api/mod.rs
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/stores/{store}"),
    ("GET", "/v1/stores/{store}/stock/{sku}"),
    ("GET", "/get-stock/{store_id}/{product_id}"),
    ("POST", "/v1/stores"),
    // api/reads.rs
    ("GET", "/v1/stores"),
    ("GET", "/v1/stores/{store}/stock"),
    ("GET", "/v1/products/{sku}/stock"),
    ("GET", "/v1/movements"),
    ("GET", "/audit-logs"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/parked"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    // api/commands.rs
    ("POST", "/v1/stores/{store}/movements"),
    ("POST", "/update-stock/{store_id}/{product_id}"),
    ("GET", "/v1/stores/{store}/commands"),
    // api/bootstrap.rs
    ("GET", "/v1/stores/{store}/snapshot"),
    // api/intelligence.rs
    ("GET", "/v1/thresholds"),
    ("PUT", "/v1/thresholds"),
    ("DELETE", "/v1/thresholds"),
    ("GET", "/v1/stores/{store}/thresholds"),
    ("GET", "/v1/alerts"),
    ("POST", "/v1/alerts/{id}/ack"),
    ("POST", "/v1/forecasts/run"),
    ("GET", "/v1/forecasts/runs/{id}"),
    ("GET", "/v1/forecasts/{store}/{sku}"),
    ("GET", "/v1/products/{sku}/forecast"),
    ("GET", "/v1/reorders"),
    ("GET", "/v1/transfers/suggestions"),
    // api/enrolment.rs
    ("POST", "/v1/stores/{store}/enrolment"),
    ("POST", "/v1/enrol"),
    // api/charts.rs
    ("GET", "/v1/dashboard/stores"),
    ("GET", "/v1/dashboard/alerts"),
    ("GET", "/v1/stores/{store}/sync-history"),
    // api/dashboard.rs
    ("GET", "/"),
    ("GET", "/static/app.js"),
    ("GET", "/static/style.css"),
];

/// Paths the design names (DESIGN §7) and neighbours of the served ones: whatever answers
/// on them, with any method, must be documented, even before it is added to [`SERVED`].
const PROBED: &[&str] = &[
    "/",
    "/update-stock/{store_id}/{product_id}",
    "/v1/stores/{store}/movements",
    "/v1/stores/{store}/snapshot",
    "/v1/stores/{store}/thresholds",
    "/v1/stores/{store}/state",
    "/v1/stores/{store}/commands",
    "/v1/stores/{store}/document",
    "/v1/products/{sku}",
    "/v1/products/{sku}/forecast",
    "/v1/products",
    "/v1/thresholds",
    "/v1/alerts",
    "/v1/alerts/{id}",
    "/v1/alerts/{id}/ack",
    "/v1/forecasts/{store}/{sku}",
    "/v1/forecasts/run",
    "/v1/forecasts/runs/{id}",
    "/v1/reorders",
    "/v1/transfers/suggestions",
    "/v1/parked/{id}",
    "/v1/movements/{id}",
    "/v1/audit/{id}",
];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

struct App {
    hub: Arc<Hub>,
    database: String,
}

async fn spawn_app() -> App {
    let (hub, database) = common::spawn_hub("bz_openapi", |f| {
        // No broker: /readyz reports it and still answers.
        f.kafka_brokers = Some("127.0.0.1:1".into());
    })
    .await;
    App { hub, database }
}

/// A concrete path for a template: identifiers get valid values, anything else `1`.
fn sample(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            "{store}" | "{store_id}" => "S1",
            "{sku}" | "{product_id}" => "MILK",
            s if s.starts_with('{') => "1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl App {
    async fn request(&self, method: &str, path: &str) -> (u16, String, Vec<u8>) {
        let reply = common::request(
            &self.hub,
            method,
            path,
            Some(ADMIN),
            &[("content-length", "0")],
            None,
        )
        .await;
        let content_type = reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (reply.status, content_type, reply.body)
    }

    /// Whether some route took the request (rather than the router refusing it).
    async fn served(&self, method: &str, path: &str) -> bool {
        let (status, _, body) = self.request(method, path).await;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or("");
        !(status == 405 || (status == 404 && message.starts_with("no such route")))
    }

    async fn document(&self) -> Value {
        let (status, content_type, body) = self.request("GET", "/openapi.json").await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "application/json");
        serde_json::from_slice(&body).expect("the document is JSON")
    }

    async fn cleanup(self) {
        common::drop_database(&self.hub, &self.database).await;
    }
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            ops.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    ops
}

#[tokio::test]
async fn every_served_route_is_documented_and_every_documented_route_is_served() {
    let app = spawn_app().await;
    let doc = app.document().await;
    let documented = documented(&doc);
    let table: BTreeSet<(String, String)> = SERVED
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(table.len(), SERVED.len(), "the table names a route twice");

    let mut problems = Vec::new();
    for (method, template) in &table {
        if !app.served(method, &sample(template)).await {
            problems.push(format!(
                "{method} {template} is in the table but not served"
            ));
        }
        if !documented.contains(&(method.clone(), template.clone())) {
            problems.push(format!(
                "{method} {template} is served but not in /openapi.json"
            ));
        }
    }
    for (method, template) in documented.difference(&table) {
        problems.push(format!(
            "{method} {template} is documented but not in this test's table (add it, or remove the operation)"
        ));
    }
    // Any other method that answers on a known path must be documented as well.
    let templates: BTreeSet<&str> = table
        .iter()
        .map(|(_, p)| p.as_str())
        .chain(PROBED.iter().copied())
        .collect();
    for template in templates {
        for method in METHODS {
            let key = (method.to_owned(), template.to_owned());
            if !documented.contains(&key) && app.served(method, &sample(template)).await {
                problems.push(format!("{method} {template} answers but is not documented"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    app.cleanup().await;
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push(r);
                    }
                }
                refs(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_complete_and_self_consistent() {
    let app = spawn_app().await;
    let doc = app.document().await;
    assert_eq!(doc["openapi"], "3.0.3");
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    for r in &all_refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r} points outside components/schemas"));
        assert!(schemas.contains_key(name), "{r} does not resolve");
    }
    let error = &schemas["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error"]));

    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{} {path}", method.to_uppercase());
            assert!(op["operationId"].is_string(), "{at}");
            assert!(op["security"].is_array(), "{at}: says who may call it");
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{at}: no success answer"
            );
            for (status, response) in responses {
                assert!(response["description"].is_string(), "{at} {status}");
                let code: u16 = status
                    .parse()
                    .unwrap_or_else(|_| panic!("{at}: status {status}"));
                if code >= 400 && !(path == "/readyz" && code == 503) {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{at} {status}: errors are the one JSON shape"
                    );
                }
                if code != 204 {
                    assert!(
                        response["content"]
                            .as_object()
                            .is_some_and(|c| !c.is_empty()),
                        "{at} {status}: content type"
                    );
                }
            }
            let secured = op["security"] != serde_json::json!([]);
            if secured {
                assert!(
                    responses.contains_key("401"),
                    "{at}: a token route documents 401"
                );
            }
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            let in_template: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            assert_eq!(declared, in_template, "{at}: path parameters");
        }
    }

    // Spot checks that the schemas are the Rust types'.
    let movements = &doc["paths"]["/v1/movements"]["get"];
    let names: Vec<&str> = movements["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["store", "sku", "since", "cursor", "limit"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let movement = &schemas["Movement"]["properties"];
    for field in [
        "store",
        "origin",
        "seq",
        "id",
        "kind",
        "sku",
        "delta",
        "ref",
        "received_at",
    ] {
        assert!(
            movement.get(field).is_some(),
            "Movement.{field}: {movement}"
        );
    }
    let seed = &doc["paths"]["/get-stock/{store_id}/{product_id}"]["get"]["responses"];
    assert!(
        seed.get("429").is_some(),
        "the rate-limited route documents 429"
    );
    assert_eq!(
        doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    app.cleanup().await;
}
