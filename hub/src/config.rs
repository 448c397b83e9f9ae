//! Hub configuration: an optional TOML file, each setting overridable by a `BAZAAR_HUB_*`
//! variable (DESIGN §7). Secrets are wrapped so they never print.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::Context;
use bazaar_shared::topics::DEFAULT_PREFIX;
use serde::Deserialize;

pub use bazaar_shared::Secret;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub mysql_url: Option<Secret>,
    pub mysql_replica_url: Option<Secret>,
    pub redis_url: Option<String>,
    pub kafka_brokers: Option<String>,
    pub listen: Option<String>,
    pub admin_token: Option<Secret>,
    pub kafka_group: Option<String>,
    pub topic_prefix: Option<String>,
    pub rate_limit_get_stock: Option<u32>,
    pub open_get_stock: Option<bool>,
    pub redis_prefix: Option<String>,
    pub stock_cache_ttl_secs: Option<u64>,
    pub trusted_proxies: Option<Vec<String>>,
    pub forecast_at: Option<String>,
    pub push_thresholds: Option<bool>,
    pub stale_store_after_secs: Option<u64>,
    pub service_level: Option<f64>,
    pub replica_max_lag_ms: Option<u64>,
    pub max_held_ahead: Option<u64>,
    pub max_transfer_notices_per_day: Option<u64>,
    pub api_statement_timeout_ms: Option<u64>,
    /// librdkafka properties for every Kafka client of the hub (`[kafka]`).
    pub kafka: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub mysql_url: Secret,
    pub mysql_replica_url: Option<Secret>,
    pub redis_url: String,
    pub kafka_brokers: String,
    pub listen: SocketAddr,
    pub admin_token: Option<Secret>,
    pub kafka_group: String,
    pub topic_prefix: String,
    pub rate_limit_get_stock: u32,
    pub open_get_stock: bool,
    /// Every Redis key starts with it (`bazaar:`); lets test runs share one Redis.
    pub redis_prefix: String,
    /// How long a cached stock figure lives without a refresh; 0 turns the cache off.
    pub stock_cache_ttl_secs: u64,
    /// Peers whose `X-Forwarded-For` is believed (load balancers, reverse proxies).
    pub trusted_proxies: Vec<IpAddr>,
    /// Reads leave the replica when it is further behind the primary than this.
    pub replica_max_lag_ms: u64,
    /// Intelligence settings (thresholds, alerts, the forecast job).
    pub intelligence: IntelligenceConfig,
    /// What one store's messages can make ingest hold or do.
    pub limits: crate::ingest::Limits,
    /// API reads on MySQL are cut off after this (MariaDB `max_statement_time`), so a
    /// slow read never holds the connections ingest and writes need.
    pub api_statement_timeout_ms: u64,
    /// librdkafka properties (SASL, TLS, ...) for every client the hub makes.
    pub kafka_properties: bazaar_shared::kafka::KafkaProperties,
}

/// `BAZAAR_HUB_FORECAST_AT`, `BAZAAR_HUB_PUSH_THRESHOLDS`, `BAZAAR_HUB_STALE_STORE_AFTER_SECS`,
/// `BAZAAR_HUB_SERVICE_LEVEL`.
#[derive(Debug, Clone, PartialEq)]
pub struct IntelligenceConfig {
    /// UTC time of day of the nightly forecast run; `None` (unset): no nightly run.
    pub forecast_at: Option<chrono::NaiveTime>,
    /// Forecast-derived reorder points and maxima become the lowest level of the thresholds
    /// (at the hub and in the stores' documents).
    pub push_thresholds: bool,
    /// A store with no movement or sync for longer than this is stale; 0 turns it off.
    pub stale_store_after_secs: u64,
    /// Cycle service level of the reorder points, in (0.5, 1).
    pub service_level: f64,
}

impl Default for IntelligenceConfig {
    fn default() -> Self {
        IntelligenceConfig {
            forecast_at: None,
            push_thresholds: false,
            stale_store_after_secs: 1800,
            service_level: 0.95,
        }
    }
}

impl IntelligenceConfig {
    fn from_layers(
        file: &FileConfig,
        var: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<IntelligenceConfig> {
        let forecast_at = match var("FORECAST_AT").or_else(|| file.forecast_at.clone()) {
            Some(raw) => Some(
                chrono::NaiveTime::parse_from_str(raw.trim(), "%H:%M").with_context(|| {
                    format!("BAZAAR_HUB_FORECAST_AT={raw:?} is not a UTC time of day HH:MM")
                })?,
            ),
            None => None,
        };
        let push_thresholds = match var("PUSH_THRESHOLDS") {
            Some(raw) => matches!(raw.as_str(), "1" | "true" | "yes"),
            None => file.push_thresholds.unwrap_or(false),
        };
        let stale_store_after_secs = match var("STALE_STORE_AFTER_SECS") {
            Some(raw) => raw.parse().with_context(|| {
                format!(
                    "BAZAAR_HUB_STALE_STORE_AFTER_SECS={raw:?} is not a whole number of seconds"
                )
            })?,
            None => file.stale_store_after_secs.unwrap_or(1800),
        };
        let service_level = match var("SERVICE_LEVEL") {
            Some(raw) => raw
                .parse()
                .with_context(|| format!("BAZAAR_HUB_SERVICE_LEVEL={raw:?} is not a number"))?,
            None => file.service_level.unwrap_or(0.95),
        };
        if !(0.5..1.0).contains(&service_level) {
            anyhow::bail!(
                "BAZAAR_HUB_SERVICE_LEVEL={service_level} must be at least 0.5 and below 1"
            );
        }
        Ok(IntelligenceConfig {
            forecast_at,
            push_thresholds,
            stale_store_after_secs,
            service_level,
        })
    }
}

impl HubConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<HubConfig> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| {
                    format!("cannot read the hub configuration {}", p.display())
                })?;
                toml::from_str(&text)
                    .with_context(|| format!("{} is not a valid hub configuration", p.display()))?
            }
            None => FileConfig::default(),
        };
        Self::from_layers(file, |name| std::env::var(name).ok())
    }

    pub fn from_layers(
        file: FileConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<HubConfig> {
        let var = |name: &str| env(&format!("BAZAAR_HUB_{name}")).filter(|v| !v.is_empty());
        let intelligence = IntelligenceConfig::from_layers(&file, var)?;
        let listen_text = var("LISTEN")
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_text
            .parse()
            .with_context(|| format!("BAZAAR_HUB_LISTEN {listen_text:?} is not IP:PORT"))?;
        let rate = match var("RATE_LIMIT_GET_STOCK") {
            Some(raw) => raw.parse().with_context(|| {
                format!("BAZAAR_HUB_RATE_LIMIT_GET_STOCK={raw:?} is not a whole number")
            })?,
            None => file.rate_limit_get_stock.unwrap_or(5),
        };
        let open_get_stock = match var("OPEN_GET_STOCK") {
            Some(raw) => matches!(raw.as_str(), "1" | "true" | "yes"),
            None => file.open_get_stock.unwrap_or(false),
        };
        let ttl = match var("STOCK_CACHE_TTL_SECS") {
            Some(raw) => raw.parse().with_context(|| {
                format!("BAZAAR_HUB_STOCK_CACHE_TTL_SECS={raw:?} is not a whole number of seconds")
            })?,
            None => file.stock_cache_ttl_secs.unwrap_or(3600),
        };
        let replica_max_lag_ms = match var("REPLICA_MAX_LAG_MS") {
            Some(raw) => raw.parse().with_context(|| {
                format!(
                    "BAZAAR_HUB_REPLICA_MAX_LAG_MS={raw:?} is not a whole number of milliseconds"
                )
            })?,
            None => file.replica_max_lag_ms.unwrap_or(1000),
        };
        let proxies: Vec<String> = match var("TRUSTED_PROXIES") {
            Some(raw) => raw
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect(),
            None => file.trusted_proxies.unwrap_or_default(),
        };
        let trusted_proxies = proxies
            .iter()
            .map(|p| {
                p.parse::<IpAddr>()
                    .map(|ip| ip.to_canonical())
                    .with_context(|| {
                        format!("BAZAAR_HUB_TRUSTED_PROXIES: {p:?} is not an IP address")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let whole = |name: &str, from_file: Option<u64>, default: u64| -> anyhow::Result<u64> {
            match var(name) {
                Some(raw) => raw
                    .parse()
                    .with_context(|| format!("BAZAAR_HUB_{name}={raw:?} is not a whole number")),
                None => Ok(from_file.unwrap_or(default)),
            }
        };
        let defaults = crate::ingest::Limits::default();
        let limits = crate::ingest::Limits {
            max_held_ahead: whole(
                "MAX_HELD_AHEAD",
                file.max_held_ahead,
                defaults.max_held_ahead,
            )?
            .max(1),
            max_transfer_notices_per_day: whole(
                "MAX_TRANSFER_NOTICES_PER_DAY",
                file.max_transfer_notices_per_day,
                defaults.max_transfer_notices_per_day,
            )?,
        };
        let api_statement_timeout_ms = whole(
            "API_STATEMENT_TIMEOUT_MS",
            file.api_statement_timeout_ms,
            10_000,
        )?;
        let file_kafka = bazaar_shared::kafka::KafkaProperties::from_pairs(
            file.kafka.clone().unwrap_or_default(),
        )
        .map_err(|e| anyhow::anyhow!("[kafka] in the hub configuration: {e}"))?;
        let kafka_properties = match var("KAFKA_PROPERTIES") {
            Some(raw) => bazaar_shared::kafka::KafkaProperties::parse(&raw)
                .map_err(|e| anyhow::anyhow!("BAZAAR_HUB_KAFKA_PROPERTIES: {e}"))?
                .merged_over(&file_kafka),
            None => file_kafka,
        };
        Ok(HubConfig {
            limits,
            api_statement_timeout_ms,
            kafka_properties,
            mysql_url: var("MYSQL_URL")
                .map(Secret::new)
                .or(file.mysql_url)
                .unwrap_or_else(|| Secret::new("mysql://root@127.0.0.1:3306/bazaar")),
            mysql_replica_url: var("MYSQL_REPLICA_URL")
                .map(Secret::new)
                .or(file.mysql_replica_url),
            redis_url: var("REDIS_URL")
                .or(file.redis_url)
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            kafka_brokers: var("KAFKA_BROKERS")
                .or(file.kafka_brokers)
                .unwrap_or_else(|| "127.0.0.1:9092".into()),
            listen,
            admin_token: var("ADMIN_TOKEN").map(Secret::new).or(file.admin_token),
            kafka_group: var("KAFKA_GROUP")
                .or(file.kafka_group)
                .unwrap_or_else(|| "bazaar-hub".into()),
            topic_prefix: var("TOPIC_PREFIX")
                .or(file.topic_prefix)
                .unwrap_or_else(|| DEFAULT_PREFIX.into()),
            rate_limit_get_stock: rate,
            open_get_stock,
            redis_prefix: var("REDIS_PREFIX")
                .or(file.redis_prefix)
                .unwrap_or_else(|| "bazaar:".into()),
            stock_cache_ttl_secs: ttl,
            trusted_proxies,
            intelligence,
            replica_max_lag_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_kafka_properties_parse_and_bad_ones_are_named() {
        let file: FileConfig = toml::from_str(
            "max_held_ahead = 50\n[kafka]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.username\" = \"S1\"\n",
        )
        .unwrap();
        let env = |name: &str| match name {
            "BAZAAR_HUB_KAFKA_PROPERTIES" => Some("sasl.username=hub,sasl.password=pw".to_string()),
            "BAZAAR_HUB_MAX_TRANSFER_NOTICES_PER_DAY" => Some("7".to_string()),
            _ => None,
        };
        let config = HubConfig::from_layers(file, env).unwrap();
        assert_eq!(config.limits.max_held_ahead, 50);
        assert_eq!(config.limits.max_transfer_notices_per_day, 7);
        assert_eq!(config.api_statement_timeout_ms, 10_000);
        let kafka = config.kafka_properties.client_config("b:1");
        assert_eq!(kafka.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(
            kafka.get("sasl.username"),
            Some("hub"),
            "the environment wins"
        );
        assert!(!format!("{config:?}").contains("pw"), "secrets never print");
        let bad = HubConfig::from_layers(FileConfig::default(), |n| {
            (n == "BAZAAR_HUB_KAFKA_PROPERTIES").then(|| "sasl.password".to_string())
        })
        .unwrap_err();
        assert!(
            format!("{bad:#}").contains("BAZAAR_HUB_KAFKA_PROPERTIES"),
            "{bad:#}"
        );
    }

    #[test]
    fn environment_overrides_file_and_secrets_stay_hidden() {
        let file = FileConfig {
            kafka_group: Some("from-file".into()),
            ..FileConfig::default()
        };
        let cfg = HubConfig::from_layers(file, |name| match name {
            "BAZAAR_HUB_MYSQL_URL" => Some("mysql://root:hunter2@db/x".into()),
            "BAZAAR_HUB_TOPIC_PREFIX" => Some("t1.".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.kafka_group, "from-file");
        assert_eq!(cfg.topic_prefix, "t1.");
        assert_eq!(cfg.rate_limit_get_stock, 5);
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_are_named() {
        let err = HubConfig::from_layers(FileConfig::default(), |n| {
            (n == "BAZAAR_HUB_LISTEN").then(|| "nope".into())
        })
        .unwrap_err();
        assert!(err.to_string().contains("BAZAAR_HUB_LISTEN"));
        let err = HubConfig::from_layers(FileConfig::default(), |n| {
            (n == "BAZAAR_HUB_TRUSTED_PROXIES").then(|| "10.0.0.1, proxy".into())
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("\"proxy\""), "{err:#}");
    }

    #[test]
    fn trusted_proxies_and_cache_settings_parse() {
        let cfg = HubConfig::from_layers(FileConfig::default(), |n| match n {
            "BAZAAR_HUB_TRUSTED_PROXIES" => Some("10.0.0.1, ::1".into()),
            "BAZAAR_HUB_STOCK_CACHE_TTL_SECS" => Some("0".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            cfg.trusted_proxies,
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(cfg.stock_cache_ttl_secs, 0);
        assert_eq!(cfg.redis_prefix, "bazaar:");
        assert_eq!(cfg.replica_max_lag_ms, 1000);
        let cfg = HubConfig::from_layers(FileConfig::default(), |n| {
            (n == "BAZAAR_HUB_REPLICA_MAX_LAG_MS").then(|| "250".into())
        })
        .unwrap();
        assert_eq!(cfg.replica_max_lag_ms, 250);
        let err = HubConfig::from_layers(FileConfig::default(), |n| {
            (n == "BAZAAR_HUB_REPLICA_MAX_LAG_MS").then(|| "1s".into())
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("BAZAAR_HUB_REPLICA_MAX_LAG_MS"),
            "{err}"
        );
    }

    #[test]
    fn intelligence_settings_parse_and_bad_ones_are_named() {
        let cfg = HubConfig::from_layers(FileConfig::default(), |_| None).unwrap();
        assert_eq!(cfg.intelligence, IntelligenceConfig::default());
        let cfg = HubConfig::from_layers(FileConfig::default(), |n| match n {
            "BAZAAR_HUB_FORECAST_AT" => Some("02:30".into()),
            "BAZAAR_HUB_PUSH_THRESHOLDS" => Some("true".into()),
            "BAZAAR_HUB_STALE_STORE_AFTER_SECS" => Some("0".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            cfg.intelligence.forecast_at,
            chrono::NaiveTime::from_hms_opt(2, 30, 0)
        );
        assert!(cfg.intelligence.push_thresholds);
        assert_eq!(cfg.intelligence.stale_store_after_secs, 0);
        for (name, value) in [
            ("BAZAAR_HUB_FORECAST_AT", "2am"),
            ("BAZAAR_HUB_SERVICE_LEVEL", "1.5"),
            ("BAZAAR_HUB_STALE_STORE_AFTER_SECS", "soon"),
        ] {
            let err = HubConfig::from_layers(FileConfig::default(), |n| {
                (n == name).then(|| value.into())
            })
            .unwrap_err();
            assert!(format!("{err:#}").contains(name), "{err:#}");
        }
    }
}
