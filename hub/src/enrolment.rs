//! Enrolment without copying secrets by hand (issue 11): HQ issues a store a one-time code
//! with an expiry (`bazaar-hub store add ID --enrolment`, `POST /v1/stores/{store}/enrolment`);
//! the store's server exchanges it once (`bazaar-agent enroll`, `POST /v1/enrol`) for the
//! store's token and signing key.
//!
//! Invariants:
//! - only the code's SHA-256 is kept (a code carries 100 random bits: nothing to
//!   brute-force, no salt needed, as for store tokens);
//! - a code is used at most once: the exchange marks it used, rotates the store's token and
//!   reads its key in one transaction that holds the code's row (`FOR UPDATE`), so two
//!   agents racing with one code get one success and one "already used";
//! - the token is rotated on every exchange: the hub keeps only a token's hash, so the
//!   token registration showed cannot be shown again. An agent still running with the old
//!   token is refused from then on (enrolment is for a new or replaced server);
//! - every issue, use and refusal is in the audit trail (`enrolment.issue`,
//!   `enrolment.use`, `enrolment.refused`); the code itself never is.

use std::net::SocketAddr;

use anyhow::Context as _;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bazaar_shared::StoreId;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::RngCore;
use serde::Serialize;
use sqlx::{MySqlPool, Row};

use crate::stores::{self, token_hash, Credentials};

/// How long a code stays valid when the issuer does not say.
pub const DEFAULT_VALID_HOURS: u32 = 24;
/// At most a month: a code is a credential, not a standing invitation.
pub const MAX_VALID_HOURS: u32 = 24 * 31;

/// Crockford's base32: no I, L, O or U, so a code read over the phone survives.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// What issuing hands out: the code is shown this once.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Issued {
    pub store: String,
    /// `XXXXX-XXXXX-XXXXX-XXXXX`; case and dashes do not matter when it is typed back.
    pub code: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("valid for {0} hours: give 1 to {MAX_VALID_HOURS}")]
    Validity(u32),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error("this enrolment code is not known for store {0}: check the store id and the code as HQ gave them, or ask HQ for a new one (`bazaar-hub store add {0} --enrolment`)")]
    Unknown(String),
    #[error("this enrolment code for store {store} was already used at {at}: a code works once; ask HQ for a new one (`bazaar-hub store add {store} --enrolment`)")]
    Used { store: String, at: String },
    #[error("this enrolment code for store {store} expired at {at}: ask HQ for a new one (`bazaar-hub store add {store} --enrolment`)")]
    Expired { store: String, at: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl RedeemError {
    fn reason(&self) -> &'static str {
        match self {
            RedeemError::Unknown(_) => "unknown",
            RedeemError::Used { .. } => "used",
            RedeemError::Expired { .. } => "expired",
            RedeemError::Database(_) => "database",
        }
    }
}

/// 20 Crockford base32 characters (100 bits) in groups of five.
pub fn new_code() -> String {
    let mut raw = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let chars: Vec<char> = raw
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect();
    chars
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// The code as it is hashed: upper case, without dashes or spaces, the letters Crockford
/// reads as digits (O → 0, I and L → 1) mapped back.
pub fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        })
        .collect()
}

pub fn code_hash(code: &str) -> String {
    token_hash(&normalise(code))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Issues a code for `store`, registering the store first when it is not (its first
/// token is then never shown: the exchange rotates it). Audited as `enrolment.issue`.
pub async fn issue(
    pool: &MySqlPool,
    store: &StoreId,
    name: Option<&str>,
    valid_hours: u32,
    actor: &str,
    from: Option<SocketAddr>,
) -> Result<Issued, IssueError> {
    if !(1..=MAX_VALID_HOURS).contains(&valid_hours) {
        return Err(IssueError::Validity(valid_hours));
    }
    let registered = if stores::exists(pool, store).await? {
        false
    } else {
        match stores::register(pool, store, name).await {
            Ok(_) => true,
            Err(stores::RegisterError::Exists(_)) => false,
            Err(stores::RegisterError::Database(e)) => return Err(e.into()),
        }
    };
    if registered {
        crate::audit::record(
            pool,
            actor,
            "store.register",
            store.as_str(),
            None,
            Some(serde_json::json!({"store": store.as_str(), "name": name, "for": "enrolment"})),
            from,
        )
        .await;
    }
    let code = new_code();
    let now = Utc::now();
    let expires_at = now + Duration::hours(i64::from(valid_hours));
    sqlx::query(
        "INSERT INTO enrolment_codes (code_hash, store, issued_at, issued_by, expires_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(code_hash(&code))
    .bind(store.as_str())
    .bind(now)
    .bind(actor)
    .bind(expires_at)
    .execute(pool)
    .await?;
    let issued = Issued {
        store: store.to_string(),
        code,
        expires_at: rfc3339(expires_at),
    };
    crate::audit::record(
        pool,
        actor,
        "enrolment.issue",
        store.as_str(),
        None,
        Some(serde_json::json!({"store": store.as_str(), "expires_at": issued.expires_at})),
        from,
    )
    .await;
    Ok(issued)
}

/// Exchanges `code` for `store`'s credentials, once. Audited as `enrolment.use`, or
/// `enrolment.refused` with the reason.
pub async fn redeem(
    pool: &MySqlPool,
    store: &StoreId,
    code: &str,
    from: Option<SocketAddr>,
) -> Result<Credentials, RedeemError> {
    let outcome = exchange(pool, store, code, from).await;
    match &outcome {
        Ok(_) => {
            crate::audit::record(
                pool,
                "enrolment",
                "enrolment.use",
                store.as_str(),
                None,
                Some(serde_json::json!({"store": store.as_str(), "token": "rotated"})),
                from,
            )
            .await;
        }
        Err(e) => {
            crate::audit::record(
                pool,
                "enrolment",
                "enrolment.refused",
                store.as_str(),
                None,
                Some(serde_json::json!({"store": store.as_str(), "reason": e.reason()})),
                from,
            )
            .await;
        }
    }
    outcome
}

async fn exchange(
    pool: &MySqlPool,
    store: &StoreId,
    code: &str,
    from: Option<SocketAddr>,
) -> Result<Credentials, RedeemError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT store, expires_at, used_at FROM enrolment_codes WHERE code_hash = ? FOR UPDATE",
    )
    .bind(code_hash(code))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(RedeemError::Unknown(store.to_string()));
    };
    let owner: String = row.try_get("store")?;
    if owner != store.as_str() {
        return Err(RedeemError::Unknown(store.to_string()));
    }
    let used_at: Option<DateTime<Utc>> = row.try_get("used_at")?;
    if let Some(at) = used_at {
        return Err(RedeemError::Used {
            store: store.to_string(),
            at: rfc3339(at),
        });
    }
    let expires_at: DateTime<Utc> = row.try_get("expires_at")?;
    let now = Utc::now();
    if expires_at <= now {
        return Err(RedeemError::Expired {
            store: store.to_string(),
            at: rfc3339(expires_at),
        });
    }
    let key: Option<String> =
        sqlx::query_scalar("SELECT signing_key FROM stores WHERE id = ? FOR UPDATE")
            .bind(store.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let Some(key) = key else {
        return Err(RedeemError::Unknown(store.to_string()));
    };
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("bzs_{}", URL_SAFE_NO_PAD.encode(raw));
    sqlx::query("UPDATE stores SET token_hash = ? WHERE id = ?")
        .bind(token_hash(&token))
        .bind(store.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE enrolment_codes SET used_at = ?, used_from = ? WHERE code_hash = ?")
        .bind(now)
        .bind(from.map(|a| a.ip().to_string()))
        .bind(code_hash(code))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Credentials {
        store: store.to_string(),
        token,
        key,
    })
}

/// `bazaar-hub store add ID --enrolment [--json]`: prints the code, shown this once.
pub async fn cli_issue(
    pool: &MySqlPool,
    store: &StoreId,
    name: Option<&str>,
    valid_hours: u32,
    json: bool,
) -> anyhow::Result<()> {
    let issued = issue(pool, store, name, valid_hours, "cli", None).await?;
    if json {
        println!("{}", serde_json::to_string(&issued)?);
    } else {
        println!(
            "store       {}\ncode        {}\nexpires_at  {}",
            issued.store, issued.code, issued.expires_at
        );
        eprintln!(
            "works once, until it expires: on the store's server, as root,\n  bazaar-agent enroll --hub <HUB URL> --store {} --code {}\n\
             (or installer/install.sh --hub <HUB URL> --store {} --code {})",
            issued.store, issued.code, issued.store, issued.code
        );
    }
    Ok(())
}

/// `bazaar-hub check-config`: the configuration `serve` would load, checked without
/// connecting to anything (the unit's `ExecStartPre=`).
pub fn check_config(path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cfg = crate::config::HubConfig::load(path).with_context(|| {
        format!(
            "fix the setting named above in {} or its BAZAAR_HUB_* variable",
            path.map(|p| p.display().to_string())
                .unwrap_or_else(|| "the environment".into())
        )
    })?;
    if cfg.admin_token.is_none() {
        anyhow::bail!(
            "no admin token: set admin_token in {} (or BAZAAR_HUB_ADMIN_TOKEN), e.g. from `openssl rand -hex 32`; \
             without it nobody can register stores or issue enrolment codes",
            path.map(|p| p.display().to_string())
                .unwrap_or_else(|| "the hub configuration".into())
        );
    }
    println!(
        "ok   hub configuration: listen {}, MySQL {}, brokers {}",
        cfg.listen,
        crate::db::redact(cfg.mysql_url.expose()),
        cfg.kafka_brokers
    );
    Ok(())
}

/// systemd's notification protocol over `$NOTIFY_SOCKET` (sd_notify(3)), std only; the
/// systemd's notification protocol: one implementation for both binaries.
pub use bazaar_shared::systemd;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_grouped_base32_and_read_back_however_typed() {
        let code = new_code();
        assert_eq!(code.len(), 23, "{code}");
        assert_eq!(code.matches('-').count(), 3);
        assert!(code
            .chars()
            .all(|c| c == '-' || ALPHABET.contains(&(c as u8))));
        assert_eq!(
            code_hash(&code),
            code_hash(&code.to_lowercase().replace('-', " "))
        );
        assert_eq!(normalise("abcde-o1l2i"), "ABCDE01121");
        assert_ne!(new_code(), new_code());
    }
}
