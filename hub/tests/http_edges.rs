//! The hub's HTTP edges (issue 9, items 8 and 9), against the real MariaDB:
//! - a wrong method on a documented path is 405 with `Allow` only when no operation of the
//!   path takes the method; a bad query string is the documented 422, naming each bad
//!   parameter, whatever the path's other methods;
//! - a body over the limit gets its JSON 413 whether or not the client waits for
//!   `100 Continue`: over a real socket, as Python's urllib sends it (the whole body, no
//!   `Expect`), and as curl does (`Expect`, then nothing until told);
//! - store tokens are looked up through a short cache that forgets a rotated token at once
//!   in the hub that rotated it, and within `TOKEN_CACHE_TTL` in every other.

// Tests state their expectations with unwrap: a panic there is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazaar_hub::startup::Hub;
use common::{call, register, request, spawn_hub, ADMIN};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// --- methods and query strings -----------------------------------------------------------

/// The JSON error's message, asserting the status and the shape.
fn refused(reply: &common::Reply, status: u16, what: &str) -> String {
    let body = reply.json();
    assert_eq!(reply.status, status, "{what}: {body}");
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{what}"
    );
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not the JSON error: {body}"))
        .to_owned()
}

#[tokio::test]
async fn a_bad_query_is_422_naming_the_bad_parameters_whatever_the_paths_other_methods() {
    let (hub, database) = spawn_hub("bz_edges", |_| {}).await;
    // The case schemathesis found: GET and DELETE share the path with PUT.
    for method in ["GET", "DELETE"] {
        let reply = request(
            &hub,
            method,
            "/v1/thresholds?store=&x=1",
            Some(ADMIN),
            &[],
            None,
        )
        .await;
        let message = refused(&reply, 422, &format!("{method} /v1/thresholds?store=&x=1"));
        assert!(
            message.contains("unknown parameter `x`"),
            "{method}: {message}"
        );
        assert!(
            message.contains("store"),
            "names what the route takes: {message}"
        );
    }
    // A value not of its type, on other routes that parse their query with warp.
    let reply = request(
        &hub,
        "GET",
        "/v1/reorders?limit=lots",
        Some(ADMIN),
        &[],
        None,
    )
    .await;
    let message = refused(&reply, 422, "limit=lots");
    assert!(message.contains("`limit` must be an integer"), "{message}");
    let reply = request(
        &hub,
        "GET",
        "/v1/alerts?limit=5&limit=6&z=",
        Some(ADMIN),
        &[],
        None,
    )
    .await;
    let message = refused(&reply, 422, "limit twice");
    assert!(message.contains("unknown parameter `z`"), "{message}");
    // A good query on the same path still works, and nothing was changed by the bad ones.
    let (status, body) = call(&hub, "GET", "/v1/thresholds", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{body}");
    // Who may call still comes first: no token is 401, bad query or not.
    let reply = request(&hub, "GET", "/v1/thresholds?x=1", None, &[], None).await;
    refused(&reply, 401, "no token");
    common::drop_database(&hub, &database).await;
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow_on_every_documented_path_and_only_there() {
    let (hub, database) = spawn_hub("bz_edges", |_| {}).await;
    let (status, doc) = call(&hub, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let mut methods: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            methods
                .entry(path.clone())
                .or_default()
                .insert(method.to_ascii_uppercase());
        }
    }
    assert!(methods.len() > 30, "{}", methods.len());
    let concrete = |template: &str| {
        template
            .split('/')
            .map(|s| if s.starts_with('{') { "S1" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut problems = Vec::new();
    for (template, taken) in &methods {
        let allow: Vec<&str> = taken.iter().map(String::as_str).collect();
        let allow = allow.join(", ");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"] {
            if taken.contains(method) {
                continue;
            }
            // A bad query too: the method is what is wrong, since no route of the path takes it.
            let path = format!("{}?x=1", concrete(template));
            let reply = request(
                &hub,
                method,
                &path,
                Some(ADMIN),
                &[("content-length", "0")],
                None,
            )
            .await;
            let got_allow = reply.headers.get("allow").and_then(|v| v.to_str().ok());
            let code = reply.json()["error"]["code"].clone();
            if reply.status != 405
                || got_allow != Some(allow.as_str())
                || code != "method_not_allowed"
            {
                problems.push(format!(
                    "{method} {path}: {} allow={got_allow:?} (want 405 allow={allow:?}) {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    let reply = request(&hub, "PATCH", "/v1/thresholds", Some(ADMIN), &[], None).await;
    let message = refused(&reply, 405, "PATCH /v1/thresholds");
    assert!(message.contains("DELETE, GET, PUT"), "{message}");
    // An unknown path is 404, whatever the method.
    for method in ["GET", "PATCH"] {
        let reply = request(&hub, method, "/v1/nothing-here", Some(ADMIN), &[], None).await;
        let message = refused(&reply, 404, "unknown path");
        assert!(message.starts_with("no such route"), "{message}");
        assert!(reply.headers.get("allow").is_none());
    }
    common::drop_database(&hub, &database).await;
}

// --- bodies over the limit, over a real socket -------------------------------------------

/// Serves the hub's routes on a free port, as `serve` does.
fn serve(hub: &Arc<Hub>) -> SocketAddr {
    let (address, server) =
        warp::serve(bazaar_hub::api::routes(hub.clone())).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    address
}

/// A response read off the wire: status, headers (lower-case names), body.
#[derive(Debug)]
struct WireResponse {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 response with a Content-Length from `stream` (skipping a
/// `100 Continue` if `skip_continue`); fails the test on a reset or a short read.
async fn read_response(stream: &mut TcpStream, what: &str) -> WireResponse {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = buffer.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status: u16 = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{what}: not an HTTP response: {head}"));
            if status == 100 {
                buffer.drain(..end + 4);
                continue;
            }
            let headers: BTreeMap<String, String> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let length: usize = headers
                .get("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("{what}: no content-length: {head}"));
            if buffer.len() >= end + 4 + length {
                return WireResponse {
                    status,
                    headers,
                    body: buffer[end + 4..end + 4 + length].to_vec(),
                };
            }
        }
        let n = stream
            .read(&mut chunk)
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the response: {e}"));
        assert!(
            n > 0,
            "{what}: the connection closed before a complete response: {:?}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn assert_json_error(response: &WireResponse, status: u16, code: &str, what: &str) {
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    assert_eq!(
        (response.status, &body["error"]["code"]),
        (status, &json!(code)),
        "{what}: {response:?}"
    );
    assert_eq!(
        response.headers.get("content-type").map(String::as_str),
        Some("application/json"),
        "{what}"
    );
    assert!(body["error"]["message"].is_string(), "{what}: {body}");
}

const MEGABYTE: usize = 1_000_000;

/// Writes `head` and then the whole `body` without waiting for an answer, as a client that
/// does not use `100 Continue` does, and only then reads the answer. The body goes in
/// 16 KiB pieces 2 ms apart, as over a link slower than loopback: on loopback the kernel's
/// buffers would otherwise take the whole megabyte before the hub even answers.
async fn send_whole(address: SocketAddr, head: &str, body: &[u8], what: &str) -> WireResponse {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let exchange = async {
        stream
            .write_all(head.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{what}: writing the head: {e}"));
        for (i, piece) in body.chunks(16 * 1024).enumerate() {
            stream.write_all(piece).await.unwrap_or_else(|e| {
                panic!(
                    "{what}: writing the body, after {} bytes: {e}",
                    i * 16 * 1024
                )
            });
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        read_response(&mut stream, what).await
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
}

#[tokio::test]
async fn a_body_over_the_limit_gets_the_json_413_from_a_client_that_does_not_wait_for_continue() {
    let (hub, database) = spawn_hub("bz_edges", |_| {}).await;
    register(&hub, "S1").await;
    let address = serve(&hub);
    let body = vec![b'x'; MEGABYTE];
    // Python's urllib: head, then the whole body straight away, then read.
    let head = format!(
        "POST /v1/stores HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {MEGABYTE}\r\nConnection: close\r\n\r\n"
    );
    let response = send_whole(address, &head, &body, "1 MB, no Expect").await;
    assert_json_error(&response, 413, "too_large", "1 MB, no Expect");
    // The same holds for any refusal made on the headers: no token on a route with a body.
    let head = format!(
        "POST /v1/stores/S1/movements HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\nContent-Length: {MEGABYTE}\r\nConnection: close\r\n\r\n"
    );
    let response = send_whole(address, &head, &body, "1 MB, no token").await;
    assert_json_error(&response, 401, "unauthorized", "1 MB, no token");
    // And for an unknown path.
    let head = format!(
        "PUT /v1/nowhere HTTP/1.1\r\nHost: hub\r\nContent-Length: {MEGABYTE}\r\nConnection: close\r\n\r\n"
    );
    let response = send_whole(address, &head, &body, "1 MB, unknown path").await;
    assert_json_error(&response, 404, "not_found", "1 MB, unknown path");
    // A chunked body (no length) is read within the same bound: the JSON 411.
    let mut chunked = Vec::new();
    for _ in 0..100 {
        chunked.extend_from_slice(format!("{:x}\r\n", 10_000).as_bytes());
        chunked.extend_from_slice(&[b'y'; 10_000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST /v1/stores HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {ADMIN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let response = send_whole(address, &head, &chunked, "1 MB chunked").await;
    assert_json_error(&response, 411, "length_required", "1 MB chunked");
    // Nothing was registered by any of it.
    let stores: i64 = sqlx::query_scalar("SELECT count(*) FROM stores")
        .fetch_one(&hub.pool)
        .await
        .unwrap();
    assert_eq!(stores, 1);
    common::drop_database(&hub, &database).await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_the_json_413_at_once_from_a_client_that_waits_for_continue() {
    let (hub, database) = spawn_hub("bz_edges", |_| {}).await;
    let address = serve(&hub);
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/stores HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {MEGABYTE}\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The hub is not asked for the body, so it does not invite it: the refusal comes first.
    let mut first = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut first))
        .await
        .expect("an answer without sending the body")
        .unwrap();
    assert_eq!(
        &first,
        b"HTTP/1.1 413",
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    let mut whole = first.to_vec();
    whole.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&whole);
    let (_, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(body["error"]["code"], "too_large", "{text}");

    // A body declared beyond the drain bound is not read at all: the 413 comes at once,
    // though not one byte of the 100 MB follows.
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/stores HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: {}\r\n\r\n",
        100 * MEGABYTE
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        read_response(&mut stream, "100 MB declared"),
    )
    .await
    .expect("the refusal does not wait for the body");
    assert_json_error(&response, 413, "too_large", "100 MB declared");
    assert!(
        bazaar_shared::http::DRAIN_LIMIT_BYTES < 100 * MEGABYTE as u64,
        "the case is beyond the bound"
    );
    common::drop_database(&hub, &database).await;
}

// --- the store-token cache ---------------------------------------------------------------

async fn rotate(hub: &Arc<Hub>, store: &str) -> String {
    let path = format!("/v1/stores/{store}/enrolment");
    let (status, issued) = call(hub, "POST", &path, Some(ADMIN), Some(json!({}))).await;
    assert_eq!(status, 201, "{issued}");
    let code = issued["code"].as_str().unwrap();
    let (status, credentials) = call(
        hub,
        "POST",
        "/v1/enrol",
        None,
        Some(json!({"store": store, "code": code})),
    )
    .await;
    assert_eq!(status, 200, "{credentials}");
    credentials["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_rotated_token_stops_at_once_on_its_hub_and_within_the_cache_ttl_on_the_others() {
    let (hub, database) = spawn_hub("bz_edges", |_| {}).await;
    // A second hub instance on the same database, as behind a balancer.
    let other = bazaar_hub::startup::build(common::config(&database, |_| {}))
        .await
        .unwrap();
    let old = register(&hub, "S1").await.token;
    for h in [&hub, &other] {
        let (status, body) = call(h, "GET", "/v1/stores/S1", Some(&old), None).await;
        assert_eq!(status, 200, "{body}");
    }
    // The second request of a token is answered from the cache, not MySQL.
    let (hits, misses) = hub.tokens.stats();
    assert_eq!(
        call(&hub, "GET", "/v1/stores/S1", Some(&old), None).await.0,
        200
    );
    assert_eq!(hub.tokens.stats(), (hits + 1, misses));

    let rotated_at = Instant::now();
    let new = rotate(&hub, "S1").await;
    // The hub that rotated it refuses the old token at once, and takes the new one.
    let (status, body) = call(&hub, "GET", "/v1/stores/S1", Some(&old), None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        call(&hub, "GET", "/v1/stores/S1", Some(&new), None).await.0,
        200
    );
    // Another hub refuses it within the TTL.
    let bound = bazaar_hub::stores::TOKEN_CACHE_TTL + Duration::from_secs(1);
    loop {
        let (status, _) = call(&other, "GET", "/v1/stores/S1", Some(&old), None).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            rotated_at.elapsed() < bound,
            "the other hub still took the old token after {:?}",
            rotated_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        call(&other, "GET", "/v1/stores/S1", Some(&new), None)
            .await
            .0,
        200
    );
    // Unknown tokens are refused (and remembered briefly, which changes nothing).
    for _ in 0..2 {
        let (status, _) = call(&hub, "GET", "/v1/stores/S1", Some("bzs_nobody"), None).await;
        assert_eq!(status, 401);
    }
    common::drop_database(&hub, &database).await;
}
