//! What the agent asks the hub over HTTP (reqwest): the store's sync state, a missing range
//! of hub commands, and bulk-state documents.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::config::AgentConfig;

/// The hub's view of this store (`GET /v1/stores/{store}`).
#[derive(Debug, Clone, Deserialize)]
pub struct StoreState {
    pub store: String,
    /// The highest store-origin seq applied, all below it applied too.
    pub last_seq: u64,
    #[serde(default)]
    pub last_hub_seq: u64,
    /// The id of the store-origin movement at `last_seq` (null when there is none): lets
    /// the agent tell its own movements from another copy's.
    #[serde(default)]
    pub last_id: Option<String>,
    /// Parked messages of this store not yet resolved at the hub.
    #[serde(default)]
    pub parked: i64,
}

/// One page of the hub's parked messages for this store (`GET /v1/parked?store=`).
#[derive(Debug, Clone, Deserialize)]
pub struct ParkedPage {
    pub items: Vec<HubParked>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HubParked {
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub event_id: Option<String>,
    pub reason: String,
    #[serde(default)]
    pub detail: String,
    /// The hub consumed this message's seq with a void of its own (absent from a hub that
    /// predates voids).
    #[serde(default)]
    pub consumed: Option<bool>,
}

#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
    url: String,
    parked_url: String,
    token: String,
}

impl HubClient {
    pub fn new(config: &AgentConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("bazaar-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            url: format!("{}/v1/stores/{}", config.hub_url, config.store),
            parked_url: format!(
                "{}/v1/parked?store={}&limit=1000",
                config.hub_url, config.store
            ),
            token: config.token.expose().to_owned(),
        })
    }

    pub async fn store_state(&self) -> anyhow::Result<StoreState> {
        self.get_json("").await
    }

    /// The hub's signed commands for this store with hub_seq > `after`, in order.
    pub async fn commands_after(&self, after: u64, limit: u32) -> anyhow::Result<CommandsPage> {
        self.get_json(&format!("/commands?after={after}&limit={limit}"))
            .await
    }

    /// The store's thresholds document (`GET /v1/stores/{store}/thresholds`).
    pub async fn thresholds(&self) -> anyhow::Result<crate::commands::ThresholdsDocument> {
        self.get_json("/thresholds").await
    }

    /// One page of this store's parked messages at the hub, oldest first.
    pub async fn parked(&self, cursor: Option<&str>) -> anyhow::Result<ParkedPage> {
        let mut url = self.parked_url.clone();
        if let Some(c) = cursor {
            url.push_str("&cursor=");
            url.push_str(c);
        }
        self.get_url(url, false).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, rest: &str) -> anyhow::Result<T> {
        self.get_url(format!("{}{rest}", self.url), rest.is_empty())
            .await
    }

    async fn get_url<T: serde::de::DeserializeOwned>(
        &self,
        url: String,
        store_route: bool,
    ) -> anyhow::Result<T> {
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("the hub at {url} did not answer"))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND && store_route {
            bail!("the hub does not know this store: register it with `bazaar-hub store add ID` and re-run `bazaar-agent init` with the token and key it prints");
        }
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            bail!("the hub refused this agent's token ({status}): check `token` in the agent configuration");
        }
        if !status.is_success() {
            bail!("the hub answered {status} for {url}");
        }
        response
            .json()
            .await
            .with_context(|| format!("the hub's answer at {url} was not the expected JSON"))
    }
}

/// One page of the missing-range fetch (`GET /v1/stores/{store}/commands`).
#[derive(Debug, Clone, Deserialize)]
pub struct CommandsPage {
    pub last_hub_seq: u64,
    pub commands: Vec<CommandRow>,
}

/// One signed message, exactly as the relay publishes it.
#[derive(Debug, Clone, Deserialize)]
pub struct CommandRow {
    pub hub_seq: u64,
    pub payload: String,
}
