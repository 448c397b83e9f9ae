//! Kafka helpers shared by agent and hub: plain Kafka through librdkafka, nothing
//! broker-specific, so Apache Kafka or any Kafka-API broker serves alike.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

/// The client settings every Bazaar Kafka client starts from.
pub fn base_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("socket.keepalive.enable", "true")
        // A broker that is down should be retried soon after it is back.
        .set("reconnect.backoff.max.ms", "2000")
        .set("log_level", "4");
    config
}

/// librdkafka properties an operator passes through (`security.protocol`, `sasl.*`,
/// `ssl.*`, ...): from `BAZAAR_*_KAFKA_PROPERTIES` (`key=value,key=value`) and a `[kafka]`
/// table in the TOML file. Applied last, on every client a binary makes. Values are
/// secrets as far as logs go: `Debug` and [`KafkaProperties::describe`] show keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(Vec<(String, String)>);

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KafkaProperties[{}]", self.describe())
    }
}

impl KafkaProperties {
    /// `key=value` pairs separated by commas; a value may itself hold `=`. An empty string
    /// is no properties.
    pub fn parse(raw: &str) -> Result<KafkaProperties, String> {
        let mut pairs = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!(
                    "Kafka property {:?} is not key=value (e.g. security.protocol=SASL_SSL)",
                    item.split_once(':').map_or(item, |(k, _)| k)
                ));
            };
            pairs.push((key.trim().to_owned(), value.trim().to_owned()));
        }
        KafkaProperties::from_pairs(pairs)
    }

    pub fn from_pairs(
        pairs: impl IntoIterator<Item = (String, String)>,
    ) -> Result<KafkaProperties, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (key, value) in pairs {
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
            {
                return Err(format!(
                    "Kafka property name {key:?} is not a librdkafka property name"
                ));
            }
            if key == "bootstrap.servers" {
                return Err(
                    "set the brokers with BAZAAR_*_KAFKA_BROKERS, not as a property".into(),
                );
            }
            out.retain(|(k, _)| *k != key);
            out.push((key, value));
        }
        Ok(KafkaProperties(out))
    }

    /// Later layers win key by key (the environment over the file).
    pub fn merged_over(self, base: &KafkaProperties) -> KafkaProperties {
        let mut out = base.0.clone();
        for (k, v) in self.0 {
            out.retain(|(key, _)| *key != k);
            out.push((k, v));
        }
        KafkaProperties(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys, for logs and `doctor`: never the values.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn apply(&self, config: &mut ClientConfig) {
        for (key, value) in &self.0 {
            config.set(key, value);
        }
    }

    /// [`base_config`] with these properties on top.
    pub fn client_config(&self, brokers: &str) -> ClientConfig {
        let mut config = base_config(brokers);
        self.apply(&mut config);
        config
    }
}

/// The producer settings every Bazaar producer uses (agent outbox, hub relay, alerts):
/// idempotent, acknowledged by every in-sync replica, with a bounded delivery time. After
/// any failed delivery the caller drops the producer and starts a fresh one (a fresh
/// producer id) rather than letting librdkafka bump its epoch (KIP-360), which some
/// Kafka-API brokers mishandle (see the README's broker notes).
pub fn idempotent_producer(
    brokers: &str,
    properties: &KafkaProperties,
    message_timeout: Duration,
) -> ClientConfig {
    let mut config = base_config(brokers);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        );
    properties.apply(&mut config);
    config
}

/// Creates each topic that does not exist yet (DESIGN §5: `agent run` and `hub serve`
/// create missing topics before they produce or consume).
pub async fn ensure_topics(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), String> {
    ensure_topics_with(
        brokers,
        &KafkaProperties::default(),
        topics,
        partitions,
        replication,
    )
    .await
}

/// [`ensure_topics`] through a client carrying the operator's properties (SASL, TLS).
pub async fn ensure_topics_with(
    brokers: &str,
    properties: &KafkaProperties,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), String> {
    ensure_topics_on(
        properties.client_config(brokers),
        topics,
        partitions,
        replication,
    )
    .await
}

/// [`ensure_topics`] through an admin client made from `config` (a binary's own base
/// configuration, brokers and properties included).
pub async fn ensure_topics_on(
    config: ClientConfig,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), String> {
    let brokers = config.get("bootstrap.servers").unwrap_or("?").to_owned();
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| format!("cannot create a Kafka admin client for {brokers}: {e}"))?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .map_err(|e| format!("cannot create topics on {brokers}: {e}"))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("cannot create topic {topic}: {code}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_reach_the_client_config_and_never_the_logs() {
        let props = KafkaProperties::parse(
            "security.protocol=SASL_SSL, sasl.mechanism=PLAIN,sasl.password=s3cr=t,",
        )
        .unwrap();
        let config = props.client_config("b:9092");
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.password"), Some("s3cr=t"));
        assert_eq!(config.get("bootstrap.servers"), Some("b:9092"));
        let shown = format!("{props:?} {}", props.describe());
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("sasl.password"), "{shown}");
    }

    #[test]
    fn bad_properties_are_named_and_layers_merge_key_by_key() {
        assert!(KafkaProperties::parse("security.protocol")
            .unwrap_err()
            .contains("key=value"));
        assert!(KafkaProperties::parse("bad key=1")
            .unwrap_err()
            .contains("bad key"));
        assert!(KafkaProperties::parse("bootstrap.servers=x").is_err());
        assert!(KafkaProperties::parse("").unwrap().is_empty());
        let file = KafkaProperties::parse("a.b=1,c.d=2").unwrap();
        let env = KafkaProperties::parse("c.d=3").unwrap();
        let merged = env.merged_over(&file).client_config("x");
        assert_eq!(
            (merged.get("a.b"), merged.get("c.d")),
            (Some("1"), Some("3"))
        );
    }
}
