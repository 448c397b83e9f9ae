//! Issue 11: `bazaar-agent enroll` against a running hub, through the binaries. A code
//! from `bazaar-hub store add ID --enrolment --json` is exchanged once for the store's
//! credentials; the configuration is written as `init` writes it (0600), the agent it
//! configures runs and its movements reach the hub; a used or unknown code, or a directory
//! of another store, is refused with what to do. (The installed-service path, as root with
//! no `--data`, is `installer/test/run`.)

// Tests state their expectations with unwrap: a panic there is the failure report.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use bazaar_e2e::*;
use serde_json::{json, Value};

/// `bazaar-agent enroll ARGS`: (exit ok, stderr).
fn enroll(args: &[&str]) -> (bool, String) {
    let output = Command::new(binary("bazaar-agent"))
        .arg("enroll")
        .args(args)
        .env_remove("BAZAAR_AGENT_DATA")
        .output()
        .expect("bazaar-agent runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn keys(path: &std::path::Path) -> Vec<String> {
    // Top-level `key = value` lines (the crate has no TOML parser; both files come from
    // the same serializer).
    let text = std::fs::read_to_string(path).expect("the configuration");
    let mut keys: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_owned()))
        .filter(|k| !k.starts_with('#') && !k.starts_with('"'))
        .collect();
    keys.sort();
    keys
}

/// Kills the agent it holds when dropped.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn an_agent_enrolled_with_a_one_time_code_runs_and_syncs() {
    let mut stack = Stack::new("S1");
    stack.broker.start().expect("broker starts");
    stack.hub.start().expect("hub starts");

    let issued = Command::new(binary("bazaar-hub"))
        .args(["store", "add", "S7", "--enrolment", "--json"])
        .env("BAZAAR_HUB_MYSQL_URL", stack.names.mysql_url())
        .output()
        .expect("bazaar-hub runs");
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let issued: Value = serde_json::from_slice(&issued.stdout).expect("one JSON document");
    let mut fields: Vec<&String> = issued.as_object().expect("an object").keys().collect();
    fields.sort();
    assert_eq!(fields, ["code", "expires_at", "store"]);
    let code = issued["code"].as_str().expect("a code").to_owned();

    let hub = stack.hub.url();
    let data = stack.dir.path().join("agent-S7");
    let data_arg = data.display().to_string();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let brokers = stack.broker.address();
    let prefix = stack.names.prefix.clone();
    let args = |store: &'static str, code: &str| -> Vec<String> {
        [
            "--hub",
            &hub,
            "--store",
            store,
            "--code",
            code,
            "--data",
            &data_arg,
            "--listen",
            &listen,
            "--kafka-brokers",
            &brokers,
            "--topic-prefix",
            &prefix,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |store: &'static str, code: &str| {
        let owned = args(store, code);
        enroll(&owned.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // An unknown code: refused, nothing written.
    let (ok, stderr) = run("S7", "AAAAA-BBBBB-CCCCC-DDDDD");
    assert!(!ok);
    assert!(stderr.contains("ask HQ for a new one"), "{stderr}");
    assert!(!data.join("agent.toml").exists());

    // The code: the configuration as `init` writes it, readable by its owner only.
    let (ok, stderr) = run("S7", &code);
    assert!(ok, "{stderr}");
    let config = data.join("agent.toml");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        keys(&config),
        keys(&stack.agent.data_dir().join("agent.toml"))
    );
    assert!(data.join("agent.db").exists());
    let check = Command::new(binary("bazaar-agent"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Once only; and a directory of S7 is never taken over by another store.
    let (ok, stderr) = run("S7", &code);
    assert!(!ok);
    assert!(stderr.contains("already used"), "{stderr}");
    let (ok, stderr) = run("S8", &code);
    assert!(!ok);
    assert!(stderr.contains("configured for store S7"), "{stderr}");

    // The enrolled agent runs, and its movement reaches the hub.
    let log = std::fs::File::create(data.join("agent.log")).unwrap();
    let _agent = Child(
        Command::new(binary("bazaar-agent"))
            .arg("run")
            .env("BAZAAR_AGENT_DATA", &data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("bazaar-agent run"),
    );
    let client = http();
    let agent_url = format!("http://{listen}");
    eventually(
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let url = format!("{agent_url}/healthz");
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        },
        || tail(&data.join("agent.log"), 30),
    )
    .await;
    let reply = client
        .post(format!("{agent_url}/v1/movements"))
        .json(&json!({"kind": "receipt", "sku": "MILK-1L", "qty": 12}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    eventually(
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let url = format!("{hub}/v1/stores/S7/stock/MILK-1L");
            async move {
                let body: Value = client
                    .get(url)
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (body["on_hand"] == 12).then_some(())
            }
        },
        || format!("{}\n{}", tail(&data.join("agent.log"), 30), stack.logs()),
    )
    .await;
}
