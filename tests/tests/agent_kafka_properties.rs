//! librdkafka properties reach the agent (DESIGN §5, the broker in the trust boundary):
//! a misspelt name stops `run` at once with an error that names it, and a secret value is
//! never written to the log.

use std::process::Command;
use std::time::Duration;

use bazaar_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_properties_are_checked_at_start_and_their_secrets_never_logged() {
    let Stack {
        dir: _dir,
        names,
        agent,
        ..
    } = Stack::new("S1");
    let output = Command::new(binary("bazaar-agent"))
        .arg("run")
        .env("BAZAAR_AGENT_DATA", agent.data_dir())
        .env("BAZAAR_AGENT_KAFKA_PROPERTIES", "securty.protocol=SASL_SSL")
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a bad property name stops the agent"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("securty.protocol") && stderr.contains("librdkafka"),
        "{stderr}"
    );

    let mut agent = agent.env(
        "BAZAAR_AGENT_KAFKA_PROPERTIES",
        "client.id=store-s1,sasl.username=s1,sasl.password=hunter2-secret",
    );
    agent.start().unwrap();
    let client = http();
    eventually(
        Duration::from_secs(20),
        || {
            let client = client.clone();
            let url = agent.url();
            async move { agent_status(&client, &url).await }
        },
        || agent.log_tail(),
    )
    .await;
    let log = std::fs::read_to_string(agent.data_dir().join("agent-1.log")).unwrap();
    assert!(
        log.contains("sasl.password=<redacted>") && log.contains("client.id"),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");
    let doctor = Command::new(binary("bazaar-agent"))
        .args(["doctor", "--json"])
        .env("BAZAAR_AGENT_DATA", agent.data_dir())
        .env(
            "BAZAAR_AGENT_KAFKA_PROPERTIES",
            "client.id=store-s1,sasl.username=s1,sasl.password=hunter2-secret",
        )
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&doctor.stdout);
    assert!(shown.contains("sasl.password=<redacted>"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    drop_database(&names).await;
}
