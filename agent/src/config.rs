//! Agent configuration: a TOML file written by `init` under the data directory (or
//! `/etc/bazaar/agent.toml` when installed), each setting overridable by a
//! `BAZAAR_AGENT_*` variable. Secrets are wrapped so they never print.
//!
//! librdkafka properties (TLS, SASL, ...) pass through from a `[kafka]` table of string
//! values and `BAZAAR_AGENT_KAFKA_PROPERTIES` (`key=value,key=value`, winning key by key).
//! They are checked against librdkafka when the configuration loads, so a misspelt name
//! fails at start, and go on every Kafka client the agent makes (`kafka_config`). Their
//! values never print: `Debug` and [`KafkaProperties::describe`] show the keys only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use bazaar_shared::topics::DEFAULT_PREFIX;
use bazaar_shared::{SigningKey, StoreId};
use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "agent.toml";
pub const DATABASE_FILE: &str = "agent.db";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7171";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/bazaar-agent";

pub use bazaar_shared::Secret;

/// The file as written by `init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub store: String,
    pub hub_url: String,
    pub token: Secret,
    pub key: Secret,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub local_token: Option<Secret>,
    #[serde(default)]
    pub kafka_brokers: Option<String>,
    #[serde(default)]
    pub topic_prefix: Option<String>,
    #[serde(default)]
    pub disk_budget_mb: Option<u64>,
    #[serde(default)]
    pub resend_after_secs: Option<u64>,
    #[serde(default)]
    pub retention_days: Option<u64>,
    /// librdkafka properties for every Kafka client (string values), e.g.
    /// `security.protocol = "SASL_SSL"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kafka: BTreeMap<String, String>,
}

/// librdkafka properties passed through to every client; values are never shown.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(Vec<(String, String)>);

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KafkaProperties[{}]", self.describe())
    }
}

impl KafkaProperties {
    /// `key=value` items separated by commas (a value may hold `=`).
    pub fn parse(raw: &str) -> anyhow::Result<Vec<(String, String)>> {
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| match item.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
                // Only the part before any `:` is shown, in case a secret was pasted.
                _ => bail!(
                    "BAZAAR_AGENT_KAFKA_PROPERTIES item {:?} is not key=value (e.g. security.protocol=SASL_SSL)",
                    item.split([':', '=']).next().unwrap_or_default()
                ),
            })
            .collect()
    }

    /// The file's table with the environment's items over it, key by key; each name is
    /// checked against librdkafka.
    pub fn layered(
        file: &BTreeMap<String, String>,
        env: &[(String, String)],
    ) -> anyhow::Result<KafkaProperties> {
        let mut pairs: Vec<(String, String)> =
            file.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, v) in env {
            pairs.retain(|(key, _)| key != k);
            pairs.push((k.clone(), v.clone()));
        }
        for (key, _) in &pairs {
            if key == "bootstrap.servers" || key == "metadata.broker.list" {
                bail!("Kafka property {key}: set the brokers with `kafka_brokers` or BAZAAR_AGENT_KAFKA_BROKERS");
            }
        }
        let props = KafkaProperties(pairs);
        let mut probe = rdkafka::ClientConfig::new();
        props.apply(&mut probe);
        if let Err(e) = probe.create_native_config() {
            bail!(
                "the Kafka properties ({}) are not accepted by librdkafka: {e}; check the names in \
                 the [kafka] table and BAZAAR_AGENT_KAFKA_PROPERTIES",
                props.describe()
            );
        }
        Ok(props)
    }

    pub fn apply(&self, config: &mut rdkafka::ClientConfig) {
        for (key, value) in &self.0 {
            config.set(key, value);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys, for logs and `doctor`; a key that names a secret says so.
    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0
            .iter()
            .map(|(k, _)| {
                let lower = k.to_ascii_lowercase();
                if ["password", "secret", "key", "token"]
                    .iter()
                    .any(|w| lower.contains(w))
                {
                    format!("{k}=<redacted>")
                } else {
                    k.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The settings `run` works with, parsed and checked.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub store: StoreId,
    pub hub_url: String,
    pub token: Secret,
    pub key: SigningKey,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub local_token: Option<Secret>,
    pub kafka_brokers: String,
    /// librdkafka properties on every client (TLS, SASL, ...).
    pub kafka_properties: KafkaProperties,
    pub topic_prefix: String,
    pub disk_budget_bytes: u64,
    pub resend_after: std::time::Duration,
    /// How long acknowledged rows and idempotency keys are kept before compaction.
    pub retention: chrono::Duration,
}

impl AgentConfig {
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join(DATABASE_FILE)
    }

    /// The base configuration every Kafka client of the agent starts from: the brokers,
    /// the shared defaults, then the operator's properties.
    pub fn kafka_config(&self) -> rdkafka::ClientConfig {
        let mut config = bazaar_shared::kafka::base_config(&self.kafka_brokers);
        self.kafka_properties.apply(&mut config);
        config
    }

    /// Where `run` finds its file: `--config`, else `$BAZAAR_AGENT_DATA/agent.toml`, else
    /// `/etc/bazaar/agent.toml`, else the default data directory.
    pub fn locate(explicit: Option<&Path>) -> PathBuf {
        if let Some(path) = explicit {
            return path.to_path_buf();
        }
        if let Ok(dir) = std::env::var("BAZAAR_AGENT_DATA") {
            return Path::new(&dir).join(CONFIG_FILE);
        }
        let etc = Path::new("/etc/bazaar/agent.toml");
        if etc.exists() {
            return etc.to_path_buf();
        }
        Path::new(DEFAULT_DATA_DIR).join(CONFIG_FILE)
    }

    pub fn load(explicit: Option<&Path>) -> anyhow::Result<AgentConfig> {
        let path = Self::locate(explicit);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read the agent configuration {}; run `bazaar-agent init --store ID --hub URL \
                 --token T --key K --data DIR` first, or point to it with --config or BAZAAR_AGENT_DATA",
                path.display()
            )
        })?;
        let file: FileConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid agent configuration", path.display()))?;
        let default_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        Self::from_layers(file, default_dir, |name| std::env::var(name).ok())
    }

    /// File values, overridden by `BAZAAR_AGENT_*` variables as `env` reports them.
    pub fn from_layers(
        file: FileConfig,
        default_data_dir: PathBuf,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<AgentConfig> {
        let pick =
            |name: &str, value: Option<String>| env(&format!("BAZAAR_AGENT_{name}")).or(value);
        let store = pick("STORE", Some(file.store)).unwrap_or_default();
        let store = StoreId::parse(store).context("store id in the agent configuration")?;
        let hub_url = pick("HUB_URL", Some(file.hub_url)).unwrap_or_default();
        if !(hub_url.starts_with("http://") || hub_url.starts_with("https://")) {
            bail!("hub url {hub_url:?} must start with http:// or https://");
        }
        let token = pick("TOKEN", Some(file.token.into_inner()))
            .map(Secret::new)
            .unwrap_or_else(|| Secret::new(""));
        let key_text = pick("KEY", Some(file.key.into_inner())).unwrap_or_default();
        let key = SigningKey::from_base64(&key_text)
            .context("signing key (the `key` shown by `bazaar-hub store add`)")?;
        let data_dir = pick("DATA", file.data_dir.map(|p| p.display().to_string()))
            .map(PathBuf::from)
            .unwrap_or(default_data_dir);
        let listen_text = pick("LISTEN", file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text
            .parse()
            .with_context(|| format!("listen address {listen_text:?} is not IP:PORT"))?;
        let local_token =
            pick("LOCAL_TOKEN", file.local_token.map(Secret::into_inner)).map(Secret::new);
        if !listen.ip().is_loopback() && local_token.is_none() {
            bail!(
                "the local API would listen on {listen}, beyond this machine, without a local token: \
                 set `local_token` (or BAZAAR_AGENT_LOCAL_TOKEN), or listen on 127.0.0.1"
            );
        }
        let number = |name: &str, value: Option<u64>, default: u64| -> anyhow::Result<u64> {
            match env(&format!("BAZAAR_AGENT_{name}")) {
                Some(raw) => raw
                    .parse()
                    .with_context(|| format!("BAZAAR_AGENT_{name}={raw:?} is not a whole number")),
                None => Ok(value.unwrap_or(default)),
            }
        };
        let env_properties = match env("BAZAAR_AGENT_KAFKA_PROPERTIES") {
            Some(raw) => KafkaProperties::parse(&raw)?,
            None => Vec::new(),
        };
        let kafka_properties = KafkaProperties::layered(&file.kafka, &env_properties)?;
        Ok(AgentConfig {
            store,
            kafka_properties,
            hub_url: hub_url.trim_end_matches('/').to_owned(),
            token,
            key,
            data_dir,
            listen,
            local_token,
            kafka_brokers: pick("KAFKA_BROKERS", file.kafka_brokers)
                .unwrap_or_else(|| "127.0.0.1:9092".into()),
            topic_prefix: pick("TOPIC_PREFIX", file.topic_prefix)
                .unwrap_or_else(|| DEFAULT_PREFIX.into()),
            disk_budget_bytes: number("DISK_BUDGET_MB", file.disk_budget_mb, 2048)? * 1024 * 1024,
            resend_after: std::time::Duration::from_secs(number(
                "RESEND_AFTER_SECS",
                file.resend_after_secs,
                30,
            )?),
            retention: chrono::Duration::days(
                number("RETENTION_DAYS", file.retention_days, 30)?.min(36_500) as i64,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> FileConfig {
        FileConfig {
            store: "S1".into(),
            hub_url: "http://hub:8080/".into(),
            token: Secret::new("s3cr3t-hub-token"),
            key: Secret::new(SigningKey::generate().to_base64()),
            data_dir: None,
            listen: None,
            local_token: None,
            kafka_brokers: None,
            topic_prefix: None,
            disk_budget_mb: None,
            resend_after_secs: None,
            retention_days: None,
            kafka: BTreeMap::new(),
        }
    }

    #[test]
    fn kafka_properties_reach_every_client_config_and_never_print() {
        let mut with_table = file();
        with_table.kafka = [
            (
                "security.protocol".to_string(),
                "SASL_PLAINTEXT".to_string(),
            ),
            ("sasl.mechanism".to_string(), "SCRAM-SHA-256".to_string()),
        ]
        .into();
        let cfg = AgentConfig::from_layers(with_table, "/d".into(), |name| {
            (name == "BAZAAR_AGENT_KAFKA_PROPERTIES").then(|| {
                "sasl.mechanism=PLAIN, sasl.username=store1,sasl.password=pa=ss-w0rd".into()
            })
        })
        .unwrap();
        let client = cfg.kafka_config();
        assert_eq!(client.get("security.protocol"), Some("SASL_PLAINTEXT"));
        assert_eq!(
            client.get("sasl.mechanism"),
            Some("PLAIN"),
            "the environment wins"
        );
        assert_eq!(client.get("sasl.username"), Some("store1"));
        assert_eq!(client.get("sasl.password"), Some("pa=ss-w0rd"));
        assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        let shown = format!("{cfg:?} {}", cfg.kafka_properties.describe());
        assert!(
            !shown.contains("pa=ss") && !shown.contains("w0rd"),
            "{shown}"
        );
        assert!(shown.contains("sasl.password=<redacted>"), "{shown}");
        assert!(shown.contains("security.protocol"), "{shown}");
    }

    #[test]
    fn a_bad_kafka_property_fails_at_start_with_a_clear_error() {
        let err = AgentConfig::from_layers(file(), "/d".into(), |name| {
            (name == "BAZAAR_AGENT_KAFKA_PROPERTIES").then(|| "securty.protocol=SSL".into())
        })
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("securty.protocol") && text.contains("librdkafka"),
            "{text}"
        );
        let err = AgentConfig::from_layers(file(), "/d".into(), |name| {
            (name == "BAZAAR_AGENT_KAFKA_PROPERTIES").then(|| "sasl.password".into())
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("key=value"), "{err:#}");
        let mut table = file();
        table.kafka = [("bootstrap.servers".to_string(), "x:1".to_string())].into();
        assert!(AgentConfig::from_layers(table, "/d".into(), |_| None).is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let cfg = AgentConfig::from_layers(file(), "/d".into(), |name| match name {
            "BAZAAR_AGENT_TOPIC_PREFIX" => Some("t9.".into()),
            "BAZAAR_AGENT_LISTEN" => Some("127.0.0.1:1".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.topic_prefix, "t9.");
        assert_eq!(cfg.listen.port(), 1);
        assert_eq!(cfg.hub_url, "http://hub:8080");
        assert_eq!(cfg.data_dir, PathBuf::from("/d"));
        assert!(
            !format!("{cfg:?}").contains("s3cr3t"),
            "secrets never print"
        );
    }

    #[test]
    fn listening_beyond_loopback_needs_a_local_token() {
        let err = AgentConfig::from_layers(file(), "/d".into(), |name| {
            (name == "BAZAAR_AGENT_LISTEN").then(|| "0.0.0.0:7171".into())
        })
        .unwrap_err();
        assert!(err.to_string().contains("local token"), "{err}");
    }

    #[test]
    fn bad_values_say_what_to_fix() {
        let mut bad = file();
        bad.key = Secret::new("short");
        assert!(AgentConfig::from_layers(bad, "/d".into(), |_| None).is_err());
        let mut bad = file();
        bad.store = "no spaces".into();
        let err = AgentConfig::from_layers(bad, "/d".into(), |_| None).unwrap_err();
        assert!(format!("{err:#}").contains("store id"), "{err:#}");
    }
}
