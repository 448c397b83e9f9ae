//! The agent's local API on a shared store PC (DESIGN §6): what a hostile web page in the
//! store's browser can send — a `no-cors` fetch, a form post, a DNS-rebound host name —
//! reaches a real `bazaar-agent` process byte for byte, and nothing is recorded or read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bazaar_e2e::*;
use serde_json::{json, Value};

/// One HTTP/1.1 request exactly as written (no client fills anything in); the status and
/// the JSON body of the answer.
fn raw(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the agent accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream
        .write_all(request.as_bytes())
        .expect("the request goes out");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer, got {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// [`raw`], off the async threads.
async fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: Vec<(&str, String)>,
    body: &str,
) -> (u16, Value) {
    let (method, path, body) = (method.to_owned(), path.to_owned(), body.to_owned());
    let headers: Vec<(String, String)> = headers
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        raw(port, &method, &path, &headers, &body)
    })
    .await
    .expect("the request task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_page_in_the_stores_browser_records_nothing_and_reads_nothing() {
    let Stack {
        dir: _dir,
        names,
        mut agent,
        ..
    } = Stack::new("S1");
    // The agent alone: no broker, no hub. The tills are served anyway.
    agent.start().unwrap();
    let port = agent.port;
    let own = format!("127.0.0.1:{port}");
    let rebound = format!("evil.example:{port}");
    let client = http();
    let (status, _) = post_movement(
        &client,
        &agent.url(),
        Some("stock-in"),
        &json!({"kind": "receipt", "sku": "MILK-1L", "qty": 10}),
    )
    .await;
    assert_eq!(status, 201, "a till posting JSON is served");
    let before = agent_status(&client, &agent.url()).await.unwrap();
    let stock_before = agent_stock(&client, &agent.url()).await;

    let sale = r#"{"kind":"sale","sku":"MILK-1L","qty":10}"#;
    let cases: Vec<(&str, &str, Vec<(&str, String)>, &str, &str)> = vec![
        // fetch("http://127.0.0.1:7171/v1/movements", {method: "POST", mode: "no-cors", body: sale})
        (
            "no-cors fetch",
            "POST",
            vec![
                ("Host", own.clone()),
                ("Content-Type", "text/plain;charset=UTF-8".into()),
                ("Origin", "https://evil.example".into()),
            ],
            "/v1/movements",
            sale,
        ),
        (
            "no-cors fetch from an opaque origin",
            "POST",
            vec![
                ("Host", own.clone()),
                ("Content-Type", "text/plain;charset=UTF-8".into()),
                ("Origin", "null".into()),
            ],
            "/v1/movements",
            sale,
        ),
        // <form method=post action=http://127.0.0.1:7171/v1/movements enctype=text/plain>
        (
            "form post",
            "POST",
            vec![
                ("Host", own.clone()),
                ("Content-Type", "application/x-www-form-urlencoded".into()),
                ("Origin", "https://evil.example".into()),
            ],
            "/v1/movements",
            "kind=sale&sku=MILK-1L&qty=10",
        ),
        (
            "text/plain form post, no Origin",
            "POST",
            vec![("Host", own.clone()), ("Content-Type", "text/plain".into())],
            "/v1/movements",
            sale,
        ),
        (
            "a body with no type",
            "POST",
            vec![("Host", own.clone())],
            "/v1/movements",
            sale,
        ),
        // evil.example now resolves to 127.0.0.1: the page is same-origin with itself.
        (
            "rebound post",
            "POST",
            vec![
                ("Host", rebound.clone()),
                ("Content-Type", "application/json".into()),
                ("Origin", format!("http://{rebound}")),
            ],
            "/v1/movements",
            sale,
        ),
        (
            "rebound status read",
            "GET",
            vec![
                ("Host", rebound.clone()),
                ("Origin", format!("http://{rebound}")),
            ],
            "/v1/status",
            "",
        ),
        (
            "rebound stock read",
            "GET",
            vec![("Host", rebound.clone())],
            "/v1/stock",
            "",
        ),
        (
            "rebound sku read",
            "GET",
            vec![("Host", "evil.example".into())],
            "/v1/stock/MILK-1L",
            "",
        ),
        (
            "rebound alerts read",
            "GET",
            vec![("Host", rebound.clone())],
            "/v1/alerts",
            "",
        ),
    ];
    for (what, method, headers, path, body) in cases {
        let shown = format!("{headers:?}");
        let (status, error) = send(port, method, path, headers, body).await;
        assert!(
            [403, 415, 421].contains(&status),
            "{what}: {method} {path} {shown} answered {status} {error}"
        );
        assert!(
            error["error"]["code"].is_string() && error["error"]["message"].is_string(),
            "{what}: a JSON error, got {error}"
        );
        assert!(
            !error.to_string().contains("on_hand"),
            "{what}: nothing of the store's stock in the answer: {error}"
        );
    }
    let after = agent_status(&client, &agent.url()).await.unwrap();
    for field in ["pending", "last_seq", "sent", "acked"] {
        assert_eq!(after[field], before[field], "{field}: nothing was recorded");
    }
    assert_eq!(agent_stock(&client, &agent.url()).await, stock_before);
    assert_eq!(stock_before.get("MILK-1L"), Some(&10));
    // The browser's own pages on the agent's origin, and JSON with a charset, still work.
    let (status, reply) = send(
        port,
        "POST",
        "/v1/movements",
        vec![
            ("Host", format!("localhost:{port}")),
            ("Origin", format!("http://localhost:{port}")),
            ("Content-Type", "application/json; charset=utf-8".into()),
        ],
        r#"{"kind":"sale","sku":"MILK-1L","qty":1}"#,
    )
    .await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(
        agent_stock(&client, &agent.url()).await.get("MILK-1L"),
        Some(&9)
    );
    drop_database(&names).await;
}
