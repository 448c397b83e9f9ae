//! The agent as store IT sees it: `doctor`, and the bounded outbox (DESIGN §6).

use std::process::Command;
use std::time::Duration;

use bazaar_e2e::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_disk_budget_the_agent_still_sells_and_raises_a_critical_alert() {
    let Stack {
        dir: _dir,
        names,
        broker: _broker,
        mut hub,
        agent,
        ..
    } = Stack::new("S1");
    hub.start().unwrap();
    // A budget of 0 MiB: any database is over it.
    let mut agent = agent.env("BAZAAR_AGENT_DISK_BUDGET_MB", "0");
    agent.start().unwrap();
    let client = http();
    let (status, _) = post_movement(
        &client,
        &agent.url(),
        Some("stock-in"),
        &json!({"kind": "receipt", "sku": "A", "qty": 100}),
    )
    .await;
    assert_eq!(status, 201);
    for i in 0..20 {
        let (status, _) = post_movement(
            &client,
            &agent.url(),
            Some(&format!("k{i}")),
            &json!({"kind": "sale", "sku": "A", "qty": 1}),
        )
        .await;
        assert_eq!(status, 201, "a till is never refused, over budget or not");
    }
    let status: Value = eventually(
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let url = agent.url();
            async move {
                let s = agent_status(&client, &url).await?;
                (s["over_budget"] == true).then_some(s)
            }
        },
        || agent.log_tail(),
    )
    .await;
    assert_eq!(status["pending"], 21);
    let alerts: Value = client
        .get(format!("{}/v1/alerts", agent.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items: Vec<&Value> = alerts["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "outbox_over_budget")
        .collect();
    assert_eq!(items.len(), 1, "one alert, not one per check: {alerts}");
    assert_eq!(
        (items[0]["kind"].as_str(), items[0]["severity"].as_str()),
        (Some("outbox_over_budget"), Some("critical"))
    );
    drop_database(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_what_is_down_and_what_to_do() {
    let Stack {
        dir: _dir,
        names,
        mut broker,
        hub,
        agent,
        ..
    } = Stack::new("S1");
    let doctor = || {
        Command::new(binary("bazaar-agent"))
            .args(["doctor", "--json"])
            .env("BAZAAR_AGENT_DATA", agent.data_dir())
            .output()
            .unwrap()
    };
    // Nothing runs: hub, broker and the agent itself are down.
    let output = doctor();
    assert_eq!(output.status.code(), Some(1));
    let report: Value =
        serde_json::from_slice(&output.stdout).expect("exactly one JSON document on stdout");
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(report["ok"], false);
    for (name, ok) in [
        ("config", true),
        ("sqlite", true),
        ("disk", true),
        ("agent", false),
        ("hub", false),
        ("broker", false),
    ] {
        assert_eq!(check(name)["ok"], ok, "{name}: {report}");
        if !ok {
            assert!(
                check(name)["next_step"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name} says what to do next"
            );
        }
    }
    // Bring the broker and the hub up: those checks pass, and the clock is compared.
    broker.start().unwrap();
    let mut hub = hub;
    hub.start().unwrap();
    // The hub creates the topics once it sees the broker; poll rather than guess how long.
    let report: Value = eventually(
        Duration::from_secs(60),
        || {
            let output = doctor();
            async move {
                let report: Value = serde_json::from_slice(&output.stdout).ok()?;
                let ok = |name: &str| {
                    report["checks"]
                        .as_array()?
                        .iter()
                        .find(|c| c["name"] == name)
                        .map(|c| c["ok"] == true)
                };
                (ok("hub")? && ok("broker")?).then_some(report)
            }
        },
        || "hub and broker checks never passed".into(),
    )
    .await;
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(check("clock")["ok"], true, "{report}");
    drop_database(&names).await;
}
