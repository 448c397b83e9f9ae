//! A store server whose data directory is restored from an older copy (or copied onto a
//! second server) must never reuse a seq silently (DESIGN §6): the agent finds that the
//! hub's last seq is not its own, stops sending with a critical alert, keeps serving the
//! tills, and after `run --resnapshot` its movements go after the hub's and every figure
//! agrees.

use std::path::Path;
use std::time::Duration;

use bazaar_e2e::*;
use serde_json::{json, Value};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("the copy's directory");
    for entry in std::fs::read_dir(from).expect("the data directory") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("a copied file");
        }
    }
}

async fn sell(client: &reqwest::Client, agent: &Agent, key: &str, body: Value) {
    let (status, reply) = post_movement(client, &agent.url(), Some(key), &body).await;
    assert_eq!(status, 201, "{body}: {reply}");
}

/// Waits until the hub has applied everything the agent numbered and the agent saw it.
async fn settled(client: &reqwest::Client, stack: &Stack, pool: &sqlx::MySqlPool) -> Value {
    eventually(
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let url = stack.agent.url();
            let pool = pool.clone();
            async move {
                let s = agent_status(&client, &url).await?;
                let hub = hub_last_seq(&pool, "S1").await;
                (s["pending"] == 0 && s["sent"] == 0 && s["last_seq"] == hub && hub > 0)
                    .then_some(s)
            }
        },
        || stack.logs(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_older_copy_stops_sending_alerts_and_converges_after_a_resnapshot() {
    let mut stack = Stack::started("S1");
    let client = http();
    let pool = mysql(&stack.names).await;
    sell(
        &client,
        &stack.agent,
        "in-a",
        json!({"kind": "receipt", "sku": "A", "qty": 100}),
    )
    .await;
    sell(
        &client,
        &stack.agent,
        "in-b",
        json!({"kind": "receipt", "sku": "B", "qty": 20}),
    )
    .await;
    sell(
        &client,
        &stack.agent,
        "s-1",
        json!({"kind": "sale", "sku": "A", "qty": 1}),
    )
    .await;
    settled(&client, &stack, &pool).await;

    // The backup, taken with the agent stopped and everything acknowledged.
    stack.agent.kill();
    let backup = stack.dir.path().join("backup");
    copy_dir(stack.agent.data_dir(), &backup);

    // The store moves on.
    stack.agent.start().unwrap();
    for i in 0..3 {
        sell(
            &client,
            &stack.agent,
            &format!("later-{i}"),
            json!({"kind": "sale", "sku": "A", "qty": 2}),
        )
        .await;
    }
    sell(
        &client,
        &stack.agent,
        "in-c",
        json!({"kind": "receipt", "sku": "C", "qty": 7}),
    )
    .await;
    let moved_on = settled(&client, &stack, &pool).await;
    assert_eq!(moved_on["last_seq"], 7);

    // The server's disk is restored from the backup.
    stack.agent.kill();
    std::fs::remove_dir_all(stack.agent.data_dir()).unwrap();
    copy_dir(&backup, stack.agent.data_dir());
    let ledger_before = hub_seq_summary(&pool, "S1").await;
    let stock_before = hub_stock(&pool, "S1").await;
    let parked_before = hub_parked(&pool, "S1").await;
    stack.agent.start().unwrap();

    let stopped: Value = eventually(
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let url = stack.agent.url();
            async move {
                let s = agent_status(&client, &url).await?;
                (s["sending_stopped"] == true).then_some(s)
            }
        },
        || stack.logs(),
    )
    .await;
    assert!(
        stopped["diverged_copy"]
            .as_str()
            .is_some_and(|d| d.contains("seq 7")),
        "{stopped}"
    );
    let alerts: Value = client
        .get(format!("{}/v1/alerts", stack.agent.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alert = alerts["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "diverged_copy")
        .unwrap_or_else(|| panic!("a diverged_copy alert in {alerts}"))
        .clone();
    assert_eq!(alert["severity"], "critical");
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("bazaar-agent run --resnapshot"),
        "{alert}"
    );
    let cli = std::process::Command::new(binary("bazaar-agent"))
        .arg("status")
        .env("BAZAAR_AGENT_DATA", stack.agent.data_dir())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&cli.stdout);
    assert!(
        shown.contains("SENDING STOPPED") && shown.contains("--resnapshot"),
        "{shown}"
    );

    let doctor = std::process::Command::new(binary("bazaar-agent"))
        .args(["doctor", "--json"])
        .env("BAZAAR_AGENT_DATA", stack.agent.data_dir())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let copy = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "copy")
        .unwrap_or_else(|| panic!("a copy check in {report}"));
    assert_eq!(copy["ok"], false);
    assert!(
        copy["next_step"].as_str().unwrap().contains("--resnapshot"),
        "{copy}"
    );

    // The tills are still served (promise 3), and nothing of it reaches the hub.
    sell(
        &client,
        &stack.agent,
        "copy-1",
        json!({"kind": "sale", "sku": "A", "qty": 5}),
    )
    .await;
    sell(
        &client,
        &stack.agent,
        "copy-2",
        json!({"kind": "receipt", "sku": "D", "qty": 3}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = agent_status(&client, &stack.agent.url()).await.unwrap();
    assert_eq!(
        (
            status["pending"].as_u64(),
            status["sending_stopped"].as_bool()
        ),
        (Some(2), Some(true)),
        "{status}"
    );
    assert_eq!(
        hub_seq_summary(&pool, "S1").await,
        ledger_before,
        "the hub's ledger is unchanged"
    );
    assert_eq!(hub_stock(&pool, "S1").await, stock_before);
    assert_eq!(
        hub_parked(&pool, "S1").await,
        parked_before,
        "nothing was even sent"
    );

    // Stopped across a restart too, until the operator re-snapshots.
    stack.agent.kill();
    stack.agent.start().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = agent_status(&client, &stack.agent.url()).await.unwrap();
    assert_eq!(status["sending_stopped"], true, "{status}");
    assert_eq!(hub_seq_summary(&pool, "S1").await, ledger_before);

    stack.agent.kill();
    stack.agent.start_with(&["--resnapshot"]).unwrap();
    let converged = eventually(
        Duration::from_secs(90),
        || {
            let client = client.clone();
            let url = stack.agent.url();
            let pool = pool.clone();
            async move {
                let s = agent_status(&client, &url).await?;
                let hub = hub_last_seq(&pool, "S1").await;
                (s["sending_stopped"] == false
                    && s["pending"] == 0
                    && s["sent"] == 0
                    && hub == 9
                    && s["last_seq"] == 9)
                    .then_some(s)
            }
        },
        || stack.logs(),
    )
    .await;
    assert_eq!(converged["hub_applied_seq"], 9, "{converged}");
    let (rows, distinct, min, max) = hub_seq_summary(&pool, "S1").await;
    assert_eq!(
        (rows, distinct, min, max),
        (9, 9, 1, 9),
        "gapless, no seq used twice"
    );
    let agent_figures = agent_stock(&client, &stack.agent.url()).await;
    let hub_figures = hub_stock(&pool, "S1").await;
    assert_eq!(agent_figures, hub_figures, "every sku agrees");
    let expected: std::collections::BTreeMap<String, i64> = [
        ("A".into(), 100 - 1 - 6 - 5),
        ("B".into(), 20),
        ("C".into(), 7),
        ("D".into(), 3),
    ]
    .into();
    assert_eq!(hub_figures, expected);
    let alerts: Value = client
        .get(format!("{}/v1/alerts", stack.agent.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        alerts["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["kind"] != "diverged_copy"),
        "resolved: {alerts}"
    );
    drop_database(&stack.names).await;
}
