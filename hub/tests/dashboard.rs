//! The HQ dashboard at `/` (DESIGN §7) against the API it reads: the page and its files are
//! open and served with their content types, and the page cannot drift from the API —
//! every call `app.js` makes is a documented (method, path) of `/openapi.json`, and every
//! field it reads from an answer is in that answer's schema.
//!
//! Driven through warp::test against a fresh MariaDB database (see `common`).

mod common;

use std::sync::Arc;

use bazaar_hub::startup::Hub;
use common::ADMIN;
use serde_json::Value;

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const STYLE_CSS: &str = include_str!("../static/style.css");

struct App {
    hub: Arc<Hub>,
    database: String,
}

impl App {
    async fn spawn() -> App {
        let (hub, database) = common::spawn_hub("bz_dashboard", |f| {
            f.kafka_brokers = Some("127.0.0.1:1".into());
        })
        .await;
        App { hub, database }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> common::Reply {
        common::request(&self.hub, "GET", path, token, &[], None).await
    }

    async fn document(&self) -> Value {
        let reply = self.get("/openapi.json", None).await;
        assert_eq!(reply.status, 200);
        reply.json()
    }

    async fn cleanup(self) {
        common::drop_database(&self.hub, &self.database).await;
    }
}

fn header<'a>(reply: &'a common::Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Every `api("METHOD", `/v1/...`)` call in the script: (method, path template), the query
/// string cut off and each `${...}` turned into `{}`. Also returns how many `api("` calls
/// there are, so a call written some other way cannot slip past the check.
fn api_calls(script: &str) -> (Vec<(String, String)>, usize) {
    let mut calls = Vec::new();
    let written = script.matches("api(\"").count();
    for (at, _) in script.match_indices("api(\"") {
        let rest = &script[at + "api(\"".len()..];
        let Some((method, rest)) = rest.split_once('"') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix(',') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('`') else {
            continue;
        };
        let Some(end) = rest.find('`') else { continue };
        let literal = &rest[..end];
        let path = literal.split('?').next().unwrap_or_default();
        if !path.starts_with("/v1/") {
            continue;
        }
        let mut template = String::new();
        let mut chars = path.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek() == Some(&'{') {
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                }
                template.push_str("{}");
            } else {
                template.push(c);
            }
        }
        calls.push((method.to_owned(), template));
    }
    (calls, written)
}

/// Whether a call's path (`{}` for a parameter) is the documented `template`.
fn matches_template(call: &str, template: &str) -> bool {
    let (a, b): (Vec<_>, Vec<_>) = (call.split('/').collect(), template.split('/').collect());
    a.len() == b.len()
        && a.iter().zip(&b).all(|(c, t)| {
            let param = t.starts_with('{') && t.ends_with('}');
            (*c == "{}" && param) || (c == t && !param)
        })
}

/// The schema at `#/components/schemas/...`, or the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

/// Whether `schema` has the dotted field `path`; `[]` steps into an array's items. Looks
/// through `$ref`, `allOf`, `anyOf` and `oneOf` (how optional and nested types come out).
fn has_field(doc: &Value, schema: &Value, path: &[&str]) -> bool {
    let schema = resolve(doc, schema);
    for combinator in ["allOf", "anyOf", "oneOf"] {
        if let Some(options) = schema[combinator].as_array() {
            if options.iter().any(|s| has_field(doc, s, path)) {
                return true;
            }
        }
    }
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    if *first == "[]" {
        return schema
            .get("items")
            .is_some_and(|items| has_field(doc, items, rest));
    }
    schema["properties"]
        .get(*first)
        .is_some_and(|field| has_field(doc, field, rest))
}

#[tokio::test]
async fn the_page_and_its_files_are_open_and_served_with_their_types() {
    let app = App::spawn().await;

    let page = app.get("/", None).await;
    assert_eq!(page.status, 200, "the page needs no token");
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    let policy = header(&page, "content-security-policy");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(page.body, INDEX_HTML.as_bytes());

    for (path, content_type, body) in [
        (
            "/static/app.js",
            "application/javascript; charset=utf-8",
            APP_JS,
        ),
        ("/static/style.css", "text/css; charset=utf-8", STYLE_CSS),
    ] {
        let reply = app.get(path, None).await;
        assert_eq!(reply.status, 200, "{path} is open");
        assert_eq!(header(&reply, "content-type"), content_type, "{path}");
        assert_eq!(header(&reply, "cache-control"), "no-cache", "{path}");
        assert_eq!(reply.body, body.as_bytes(), "{path}");
    }

    // Everything the page loads is served by this hub (no CDN: the machine may be offline).
    let mut loaded = 0;
    for attribute in ["src=\"", "href=\""] {
        for (at, _) in INDEX_HTML.match_indices(attribute) {
            let rest = &INDEX_HTML[at + attribute.len()..];
            let url = &rest[..rest.find('"').expect("a closing quote")];
            // In-page links of the hash router (`#/`, `#/store/S1`) load nothing.
            if url.starts_with('#') {
                continue;
            }
            assert!(url.starts_with('/'), "{url} is not served by the hub");
            assert_eq!(app.get(url, None).await.status, 200, "{url}");
            loaded += 1;
        }
    }
    assert_eq!(loaded, 2, "the page loads its script and style sheet");

    // Inline script or style would be blocked by the page's own policy.
    assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("<style"));
    for handler in ["onclick=", "onsubmit=", "onload=", "onchange=", "style="] {
        assert!(
            !INDEX_HTML.contains(handler),
            "inline {handler} in index.html"
        );
    }

    // A near miss is still the JSON 404, not the page.
    let missing = app.get("/static/nope.js", None).await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]["message"].is_string());
    app.cleanup().await;
}

#[tokio::test]
async fn every_call_the_page_makes_is_a_documented_route_with_the_fields_it_reads() {
    let app = App::spawn().await;
    let doc = app.document().await;
    let paths = doc["paths"].as_object().expect("paths");

    let (calls, written) = api_calls(APP_JS);
    assert_eq!(
        calls.len(),
        written,
        "every api(\"METHOD\", `/v1/...`) call is parsed: {calls:?}"
    );
    for expected in [
        ("GET", "/v1/stores"),
        ("GET", "/v1/dashboard/stores"),
        ("GET", "/v1/dashboard/alerts"),
        ("POST", "/v1/alerts/{}/ack"),
        ("GET", "/v1/reorders"),
        ("GET", "/v1/transfers/suggestions"),
        ("GET", "/v1/products/{}/stock"),
        ("GET", "/v1/stores/{}/sync-history"),
        ("GET", "/v1/forecasts/{}/{}"),
    ] {
        assert!(
            calls
                .iter()
                .any(|(m, p)| m == expected.0 && p == expected.1),
            "the page calls {expected:?}: {calls:?}"
        );
    }
    let mut undocumented = Vec::new();
    for (method, call) in &calls {
        let found = paths.iter().any(|(template, item)| {
            matches_template(call, template) && item.get(method.to_ascii_lowercase()).is_some()
        });
        if !found {
            undocumented.push(format!("{method} {call}"));
        }
    }
    assert!(
        undocumented.is_empty(),
        "not in /openapi.json: {undocumented:?}"
    );

    // The fields app.js reads from each answer.
    let reads: &[(&str, &str, &[&str])] = &[
        (
            "get",
            "/v1/dashboard/stores",
            &[
                "items.[].store",
                "items.[].name",
                "items.[].last_seen_at",
                "items.[].last_seq",
                "items.[].last_hub_seq",
                "items.[].held",
                "items.[].parked",
                "items.[].outbox_pending",
                "items.[].problems",
                "next_cursor",
                "counts.all",
                "counts.ok",
                "counts.stale",
                "counts.held",
                "counts.parked",
                "counts.outbox_over_budget",
            ],
        ),
        (
            "get",
            "/v1/stores/{store}/sync-history",
            &[
                "bucket_seconds",
                "hub_outbox_pending",
                "buckets.[].start",
                "buckets.[].movements",
                "buckets.[].lag_p50_secs",
                "buckets.[].lag_p99_secs",
                "buckets.[].lag_max_secs",
                "buckets.[].hub_outbox_depth",
            ],
        ),
        (
            "get",
            "/v1/forecasts/{store}/{sku}",
            &[
                "model",
                "computed_at",
                "level",
                "backtest.rmsse",
                "history.[].date",
                "history.[].qty",
                "forecast.[].date",
                "forecast.[].mean",
                "forecast.[].lo",
                "forecast.[].hi",
                "reorder.on_hand",
                "reorder.reorder_point",
                "reorder.order_up_to",
                "reorder.suggested_qty",
                "reorder.lead_time_days",
                "reorder.demand_over_lead_time",
                "reorder.safety_stock",
            ],
        ),
        (
            "get",
            "/v1/dashboard/alerts",
            &[
                "alerts.[].id",
                "alerts.[].kind",
                "alerts.[].severity",
                "alerts.[].store",
                "alerts.[].sku",
                "alerts.[].message",
                "alerts.[].raised_at",
                "alerts.[].acknowledged_at",
                "alerts.[].acknowledged_by",
                "next_cursor",
            ],
        ),
        (
            "get",
            "/v1/reorders",
            &[
                "reorders.[].store",
                "reorders.[].sku",
                "reorders.[].on_hand",
                "reorders.[].reorder_point",
                "reorders.[].order_up_to",
                "reorders.[].pack_size",
                "reorders.[].lead_time_days",
                "reorders.[].suggested_qty",
                "reorders.[].store",
                "next_cursor",
            ],
        ),
        (
            "get",
            "/v1/transfers/suggestions",
            &[
                "suggestions.[].sku",
                "suggestions.[].transfers.[].from",
                "suggestions.[].transfers.[].to",
                "suggestions.[].transfers.[].quantity",
                "suggestions.[].purchases_after_transfers.[].store",
                "suggestions.[].purchases_after_transfers.[].qty",
                "next_cursor",
            ],
        ),
        (
            "get",
            "/v1/products/{sku}/stock",
            &[
                "sku",
                "total",
                "stores.[].store",
                "stores.[].on_hand",
                "stores.[].version",
                "stores.[].updated_at",
            ],
        ),
    ];
    let mut missing = Vec::new();
    for (method, path, fields) in reads {
        let schema = &doc["paths"][*path][*method]["responses"]["200"]["content"]
            ["application/json"]["schema"];
        assert!(!schema.is_null(), "{method} {path}: a JSON 200");
        for field in *fields {
            let steps: Vec<&str> = field.split('.').collect();
            if !has_field(&doc, schema, &steps) {
                missing.push(format!("{method} {path}: {field}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "app.js reads fields the API does not document: {missing:#?}"
    );

    // Errors the page shows are `error.message`, the one error shape.
    let (status, body) = common::call(
        &app.hub,
        "GET",
        "/v1/products/NOPE/stock",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(APP_JS.contains("err.message"));
    app.cleanup().await;
}

#[test]
fn the_call_extractor_sees_parameters_and_cuts_queries() {
    let (calls, written) = api_calls(
        "api(\"GET\", `/v1/a?${q({x: 1})}`); api(\"POST\", `/v1/b/${encodeURIComponent(id)}/c`); api(\"GET\", \"/v1/odd\")",
    );
    assert_eq!(
        calls,
        vec![
            ("GET".to_owned(), "/v1/a".to_owned()),
            ("POST".to_owned(), "/v1/b/{}/c".to_owned()),
        ]
    );
    assert_eq!(
        written, 3,
        "the odd call is counted, so the real check fails on it"
    );
    assert!(matches_template("/v1/b/{}/c", "/v1/b/{id}/c"));
    assert!(!matches_template("/v1/b/{}/c", "/v1/b/x/c"));
    assert!(!matches_template("/v1/b", "/v1/b/{id}"));
}

/// The chain views' routes: the store list pages by keyset with the health filter and the
/// id-prefix search in the query (a filtered page is full, the next one continues after
/// it), severity filters alerts, and a store's sync history buckets the lag of its
/// store-origin movements and the hub's outbox depth.
#[tokio::test]
async fn chain_views_filter_page_and_bucket_on_the_server() {
    let app = App::spawn().await;
    for i in 0..30 {
        common::register(&app.hub, &format!("S{i:02}")).await;
    }
    common::register(&app.hub, "T_1").await;
    common::register(&app.hub, "TX1").await;
    let pool = &app.hub.pool;
    for store in ["S03", "S17", "S25"] {
        sqlx::query("INSERT INTO held_events (store, origin, seq, id, payload, received_at) VALUES (?, 'store', 9, UUID(), '{}', UTC_TIMESTAMP(6))")
            .bind(store)
            .execute(pool)
            .await
            .unwrap();
    }
    let get = |path: String| {
        let hub = app.hub.clone();
        async move {
            let (status, body) = common::call(&hub, "GET", &path, Some(ADMIN), None).await;
            assert_eq!(status, 200, "{path}: {body}");
            body
        }
    };
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["store"].as_str().unwrap().to_owned())
            .collect()
    };

    let first = get("/v1/dashboard/stores?health=held&limit=2".into()).await;
    assert_eq!(ids(&first), ["S03", "S17"]);
    assert_eq!(first["counts"]["all"], 32);
    assert_eq!(first["counts"]["held"], 3);
    assert_eq!(first["counts"]["ok"], 29);
    assert_eq!(first["items"][0]["problems"], serde_json::json!(["held"]));
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = get(format!(
        "/v1/dashboard/stores?health=held&limit=2&cursor={cursor}"
    ))
    .await;
    assert_eq!(ids(&second), ["S25"]);
    assert!(second["next_cursor"].is_null());

    let ok = get("/v1/dashboard/stores?health=ok&prefix=S1&limit=100".into()).await;
    assert_eq!(
        ok["items"].as_array().unwrap().len(),
        9,
        "S10..S19 less S17"
    );
    assert_eq!(ok["counts"]["all"], 10);
    // `_` is no wildcard, and the search is case-exact.
    assert_eq!(
        ids(&get("/v1/dashboard/stores?prefix=T_".into()).await),
        ["T_1"]
    );
    assert!(ids(&get("/v1/dashboard/stores?prefix=s1".into()).await).is_empty());
    for bad in [
        "health=sick",
        "prefix=a%25",
        "limit=0",
        "cursor=nope",
        "colour=red",
    ] {
        let (status, body) = common::call(
            &app.hub,
            "GET",
            &format!("/v1/dashboard/stores?{bad}"),
            Some(ADMIN),
            None,
        )
        .await;
        assert_eq!(status, 422, "{bad}: {body}");
    }

    // Alerts by severity: a negative count is critical, an out-of-stock a warning.
    for (store, body) in [
        (
            "S01",
            serde_json::json!({"kind": "adjustment", "sku": "MILK", "qty": -3, "reason": "damage"}),
        ),
        (
            "S02",
            serde_json::json!({"kind": "count", "sku": "MILK", "counted": 0}),
        ),
    ] {
        let (status, reply) = common::call(
            &app.hub,
            "POST",
            &format!("/v1/stores/{store}/movements"),
            Some(ADMIN),
            Some(body),
        )
        .await;
        assert_eq!(status, 202, "{reply}");
    }
    let critical = get("/v1/dashboard/alerts?severity=critical&open=true".into()).await;
    let alerts = critical["alerts"].as_array().unwrap();
    assert!(
        !alerts.is_empty() && alerts.iter().all(|a| a["severity"] == "critical"),
        "{critical}"
    );
    assert!(
        alerts
            .iter()
            .any(|a| a["store"] == "S01" && a["kind"] == "negative_stock"),
        "{critical}"
    );
    let s02 = get("/v1/dashboard/alerts?store=S02".into()).await;
    assert!(s02["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["store"] == "S02"));
    let (status, _) = common::call(
        &app.hub,
        "GET",
        "/v1/dashboard/alerts?severity=loud",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 422);

    // Sync history: three movements 2, 4 and 30 s late in the last bucket; the hub's
    // outbox holds the HQ adjustment for S01, unpublished (no broker).
    for (seq, lag) in [(1, 2), (2, 4), (3, 30)] {
        sqlx::query("INSERT INTO movements (store, origin, seq, id, kind, sku, delta, occurred_at, received_at) VALUES ('S01', 'store', ?, UUID(), 'sale', 'MILK', -1, UTC_TIMESTAMP(6) - INTERVAL ? SECOND, UTC_TIMESTAMP(6))")
            .bind(seq)
            .bind(lag)
            .execute(pool)
            .await
            .unwrap();
    }
    let history = get("/v1/stores/S01/sync-history?hours=2".into()).await;
    assert_eq!(history["bucket_seconds"], 600);
    let buckets = history["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 12);
    let last = buckets.last().unwrap();
    assert_eq!(last["movements"], 3, "{history}");
    assert!(
        (last["lag_p50_secs"].as_f64().unwrap() - 4.0).abs() < 0.5,
        "{last}"
    );
    assert!(
        (last["lag_max_secs"].as_f64().unwrap() - 30.0).abs() < 0.5,
        "{last}"
    );
    assert_eq!(last["hub_outbox_depth"], history["hub_outbox_pending"]);
    assert!(
        history["hub_outbox_pending"].as_u64().unwrap() >= 1,
        "{history}"
    );
    assert!(buckets[0]["lag_p50_secs"].is_null());
    let (status, _) = common::call(
        &app.hub,
        "GET",
        "/v1/stores/NOPE/sync-history",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = common::call(
        &app.hub,
        "GET",
        "/v1/stores/S01/sync-history?hours=500",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 422);
    app.cleanup().await;
}
