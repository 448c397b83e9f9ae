//! The agent as an installed service (issue 11): `bazaar-agent enroll` (a one-time code
//! from HQ exchanged for the store's token and key, no secret copied by hand),
//! `bazaar-agent check-config` (the unit's `ExecStartPre=`), `bazaar-agent schema-version`
//! (what the package's preinst compares with the data directory before a downgrade), and
//! the systemd notifications `run` sends (`READY=1`, then `WATCHDOG=1`).
//!
//! Invariants:
//! - `enroll` writes the configuration as `init` does (the same `agent.toml`, 0600, the
//!   ledger opened and its store recorded), and only after the hub accepted the code;
//! - run as root with no `--data` where the package is installed, it configures the
//!   installed service: `/etc/bazaar/agent.toml` with `data_dir = /var/lib/bazaar-agent`,
//!   the file and the data directory owned by the `bazaar-agent` user, so the unit starts
//!   enrolled. Settings already in that file (brokers, listen address, ...) are kept;
//! - a configuration naming another store is never overwritten: that ledger's movements
//!   belong to that store;
//! - the notifications are a no-op without `$NOTIFY_SOCKET`; `WATCHDOG=1` is sent only
//!   while the local API answers, so a wedged agent is restarted by systemd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use bazaar_shared::{SigningKey, StoreId};

use crate::config::{self, AgentConfig, FileConfig};
use crate::ledger;

/// Where the package puts the service's files.
pub const INSTALLED_CONFIG: &str = "/etc/bazaar/agent.toml";
pub const SERVICE_USER: &str = "bazaar-agent";

/// Where `enroll` writes and who must own it.
#[derive(Debug, Clone)]
pub struct Target {
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// (uid, gid) the files are handed to; `None`: left to whoever runs `enroll`.
    pub owner: Option<(u32, u32)>,
}

/// `--data DIR` (or `$BAZAAR_AGENT_DATA`): that directory, as `init` does. Without it:
/// the installed service when run as root where the package is installed.
pub fn target(data: Option<PathBuf>) -> anyhow::Result<Target> {
    if let Some(dir) = data {
        return Ok(Target {
            config: dir.join(config::CONFIG_FILE),
            data_dir: dir,
            owner: None,
        });
    }
    let installed = service_user();
    match installed {
        Some(owner) if is_root() => Ok(Target {
            config: INSTALLED_CONFIG.into(),
            data_dir: config::DEFAULT_DATA_DIR.into(),
            owner: Some(owner),
        }),
        Some(_) => bail!(
            "the bazaar-agent package is installed: run `sudo bazaar-agent enroll ...` to configure its \
             service, or give --data DIR for an agent of your own"
        ),
        None => bail!(
            "no --data DIR given and the bazaar-agent service is not installed here (no `{SERVICE_USER}` \
             user): give --data DIR, or install the package (or installer/install.sh) first"
        ),
    }
}

fn is_root() -> bool {
    // The effective uid, without libc: /proc/self/status's `Uid:` line is real, effective, ...
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The service user's (uid, gid), from /etc/passwd.
pub fn service_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && fields[0] == SERVICE_USER)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// What `enroll` was given besides the code.
#[derive(Debug, Clone)]
pub struct Request {
    pub hub: String,
    pub store: String,
    pub code: String,
    pub listen: Option<String>,
    pub kafka_brokers: Option<String>,
    pub topic_prefix: Option<String>,
}

pub async fn enroll(request: Request, target: Target) -> anyhow::Result<()> {
    let store = StoreId::parse(request.store.clone()).context("--store")?;
    let hub = request.hub.trim_end_matches('/').to_string();
    if !(hub.starts_with("http://") || hub.starts_with("https://")) {
        bail!("--hub {hub:?} must start with http:// or https://");
    }
    // What is there already: a package's template, or an earlier enrolment.
    let mut table = match std::fs::read_to_string(&target.config) {
        Ok(text) => text.parse::<toml::Table>().with_context(|| {
            format!(
                "{} is not valid TOML: fix or remove it, then enrol again",
                target.config.display()
            )
        })?,
        Err(_) => toml::Table::new(),
    };
    if let Some(existing) = table.get("store").and_then(|v| v.as_str()) {
        if existing != store.as_str() {
            bail!(
                "{} is configured for store {existing}, not {store}: its ledger belongs to that store. \
                 Enrol with --store {existing}, or give another --data DIR",
                target.config.display()
            );
        }
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{hub}/v1/enrol");
    let response = client
        .post(&url)
        .json(&serde_json::json!({"store": store.as_str(), "code": request.code}))
        .send()
        .await
        .with_context(|| {
            format!("cannot reach the hub at {hub}: check --hub and that this server can reach it")
        })?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no details (is --hub the hub's base URL?)");
        bail!("the hub refused the enrolment ({status}): {message}");
    }
    let (Some(token), Some(key)) = (body["token"].as_str(), body["key"].as_str()) else {
        bail!("the hub at {hub} answered without a token and key: is --hub a Bazaar hub?");
    };
    SigningKey::from_base64(key).context("the signing key the hub sent")?;
    let set = |table: &mut toml::Table, k: &str, v: String| {
        table.insert(k.into(), toml::Value::String(v));
    };
    set(&mut table, "store", store.to_string());
    set(&mut table, "hub_url", hub.clone());
    set(&mut table, "token", token.to_string());
    set(&mut table, "key", key.to_string());
    set(
        &mut table,
        "data_dir",
        target.data_dir.display().to_string(),
    );
    for (k, v) in [
        ("listen", request.listen),
        ("kafka_brokers", request.kafka_brokers),
        ("topic_prefix", request.topic_prefix),
    ] {
        if let Some(v) = v {
            set(&mut table, k, v);
        }
    }
    let file: FileConfig = toml::Value::Table(table).try_into().with_context(|| {
        format!(
            "{} holds a setting the agent does not know",
            target.config.display()
        )
    })?;
    // Check the whole configuration as `run` will see it before writing anything.
    let checked = AgentConfig::from_layers(file.clone(), target.data_dir.clone(), |_| None)?;
    write(&file, &checked, &target)?;
    eprintln!(
        "enrolled store {store} with the hub at {hub}; configuration in {}",
        target.config.display()
    );
    if target.owner.is_some() && Path::new("/run/systemd/system").exists() {
        // The installed service: (re)start it on its new configuration.
        let systemctl = |args: &[&str]| {
            std::process::Command::new("systemctl")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if systemctl(&["enable", "bazaar-agent.service"])
            && systemctl(&["restart", "bazaar-agent.service"])
        {
            eprintln!("bazaar-agent.service restarted on its new configuration (systemctl status bazaar-agent)");
        } else {
            eprintln!("next: systemctl restart bazaar-agent (it did not restart: see journalctl -u bazaar-agent)");
        }
    } else if target.owner.is_some() {
        eprintln!(
            "next: start the service (systemctl restart bazaar-agent): it now starts enrolled"
        );
    } else {
        eprintln!(
            "next: BAZAAR_AGENT_DATA={} bazaar-agent run",
            target.data_dir.display()
        );
    }
    Ok(())
}

fn write(file: &FileConfig, checked: &AgentConfig, target: &Target) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(parent) = target.config.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&target.data_dir)
        .with_context(|| format!("cannot create {}", target.data_dir.display()))?;
    let text = toml::to_string_pretty(file)?;
    // Written beside and renamed into place: a failure never leaves half a configuration.
    let staging = target.config.with_extension("toml.new");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)
        .with_context(|| format!("cannot write {}", staging.display()))?;
    out.write_all(text.as_bytes())?;
    out.sync_all()?;
    drop(out);
    std::fs::set_permissions(
        &staging,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    if let Some((uid, gid)) = target.owner {
        std::os::unix::fs::chown(&staging, Some(uid), Some(gid))?;
    }
    std::fs::rename(&staging, &target.config)
        .with_context(|| format!("cannot write {}", target.config.display()))?;
    let conn = ledger::open(&checked.database_path())?;
    ledger::set_meta(&conn, ledger::META_STORE, checked.store.as_str())?;
    drop(conn);
    if let Some((uid, gid)) = target.owner {
        std::os::unix::fs::chown(&target.data_dir, Some(uid), Some(gid))?;
        for entry in std::fs::read_dir(&target.data_dir)? {
            std::os::unix::fs::chown(entry?.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// The ledger schema this binary migrates to (SQLite `PRAGMA user_version`).
pub fn schema_version() -> anyhow::Result<u32> {
    let conn = rusqlite::Connection::open_in_memory()?;
    ledger::migrate(&conn)?;
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// `bazaar-agent schema-version`: the number alone, for the package's preinst.
pub fn print_schema_version() -> anyhow::Result<()> {
    println!("{}", schema_version()?);
    Ok(())
}

/// `check-config`: what `run` would load, and whether it can work with its data
/// directory; every failure says what to fix. Prints one line per finding.
pub fn check_config(explicit: Option<&Path>) -> anyhow::Result<()> {
    let path = AgentConfig::locate(explicit);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: enrol this server with `sudo bazaar-agent enroll --hub URL --store ID --code CODE` \
             (the code comes from HQ: `bazaar-hub store add ID --enrolment`)",
            path.display()
        )
    })?;
    let table: toml::Table = text.parse().with_context(|| {
        format!(
            "{} is not valid TOML: fix the line named above",
            path.display()
        )
    })?;
    if !table.contains_key("store") || !table.contains_key("token") {
        bail!(
            "{} has no store and credentials yet: enrol this server with \
             `sudo bazaar-agent enroll --hub URL --store ID --code CODE` (the code comes from HQ: \
             `bazaar-hub store add ID --enrolment`)",
            path.display()
        );
    }
    let cfg = AgentConfig::load(Some(&path))?;
    let dir = &cfg.data_dir;
    if !dir.is_dir() {
        bail!(
            "the data directory {} does not exist: create it (owned by the user the agent runs as), \
             or set data_dir in {}",
            dir.display(),
            path.display()
        );
    }
    let probe = dir.join(".bazaar-check-config");
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "the agent cannot write in {}: give it to the user the agent runs as (chown -R {SERVICE_USER}: {})",
            dir.display(),
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    let known = schema_version()?;
    let db = cfg.database_path();
    if db.exists() {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .with_context(|| format!("cannot open the ledger {}", db.display()))?;
        let on_disk: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if on_disk > known {
            bail!(
                "the ledger {} has schema {on_disk}, newer than this bazaar-agent knows ({known}): it was \
                 written by a newer version; install that version again (nothing was changed)",
                db.display()
            );
        }
    }
    println!(
        "ok   configuration {} (store {}, hub {}, data {}, ledger schema {known})",
        path.display(),
        cfg.store,
        cfg.hub_url,
        dir.display()
    );
    Ok(())
}

/// systemd's notification protocol: one implementation for both binaries.
pub use bazaar_shared::systemd;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_version_is_the_number_of_migrations() {
        assert!(schema_version().unwrap() >= 4);
    }

    #[test]
    fn notify_reaches_the_socket_and_is_silent_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // Both in one test: the variable is process-wide.
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(!systemd::notify("READY=1"));
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(systemd::notify("READY=1"));
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}

/// `bazaar-agent enroll`'s arguments (the binary's `Command::Enroll`).
#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    /// The hub's base URL, e.g. https://hub.example:8080
    #[arg(long)]
    pub hub: String,
    /// The one-time code from HQ (`bazaar-hub store add ID --enrolment`).
    #[arg(long)]
    pub code: String,
    /// The store's id, as HQ gave it with the code.
    #[arg(long)]
    pub store: String,
    /// Configure an agent in DIR, as `init --data DIR` does. Without it, run as root where
    /// the package is installed: configures the installed service.
    #[arg(long, env = "BAZAAR_AGENT_DATA")]
    pub data: Option<PathBuf>,
    #[arg(long)]
    pub listen: Option<String>,
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    #[arg(long)]
    pub topic_prefix: Option<String>,
}

/// `bazaar-agent enroll`.
pub async fn main(args: EnrollArgs) -> anyhow::Result<()> {
    let target = target(args.data)?;
    enroll(
        Request {
            hub: args.hub,
            store: args.store,
            code: args.code,
            listen: args.listen,
            kafka_brokers: args.kafka_brokers,
            topic_prefix: args.topic_prefix,
        },
        target,
    )
    .await
}
