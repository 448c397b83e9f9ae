//! Leases in Redis: what must run once across every hub instance (the forecast job, the
//! alert relay, the stale-store check) runs only while this hub holds the lease.
//!
//! Invariants:
//! - a lease is one key, `{prefix}lease:{name}`, holding its holder's token and expiring
//!   after its TTL; only the holder's token renews or releases it (compare-and-set in Lua),
//!   so a hub that lost its lease can never extend or delete the next holder's;
//! - a holder counts itself as holding only up to the last *confirmed* expiry, measured on
//!   its own monotonic clock from before it sent the renewal; a renewal that fails (Redis
//!   away) is retried, and once that deadline passes the holder reports the lease lost and
//!   stops doing the work, even though Redis might still show its token;
//! - Redis being unreachable means nobody can acquire: work that must run once waits
//!   rather than risk running twice.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::redis_link::RedisLink;

/// KEYS: lease. ARGV: token, ttl ms. 1 when the caller holds it now (new or renewed).
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// KEYS: lease. ARGV: token, ttl ms. 1 when renewed; 0 when the lease is not ours.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// KEYS: lease. ARGV: token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// What an attempt to take a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// This hub holds it (until its TTL, unless renewed).
    Held,
    /// Another holder has it.
    Taken,
    /// Redis could not answer: nobody should start the work.
    Unavailable,
}

/// One named lease and this hub's token for it. Cheap to clone.
#[derive(Clone)]
pub struct Lease {
    link: Arc<RedisLink>,
    key: String,
    token: String,
    ttl: Duration,
}

impl Lease {
    /// `holder` names this hub in the token (for whoever looks at Redis); a random suffix
    /// keeps two leases of one process distinct.
    pub fn new(link: Arc<RedisLink>, name: &str, holder: &str, ttl: Duration) -> Lease {
        Lease {
            key: link.key(&format!("lease:{name}")),
            token: format!("{holder}/{}", uuid::Uuid::now_v7()),
            link,
            ttl,
        }
    }

    pub fn name(&self) -> &str {
        &self.key
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lease, or renews it when this token already holds it.
    pub async fn try_acquire(&self) -> Attempt {
        self.call(ACQUIRE, true).await
    }

    /// Extends the lease by its TTL if this token still holds it.
    pub async fn renew(&self) -> Attempt {
        self.call(RENEW, true).await
    }

    /// Gives the lease up at once (if still ours), so another hub need not wait out the TTL.
    pub async fn release(&self) {
        let _ = self.call(RELEASE, false).await;
    }

    async fn call(&self, source: &'static str, with_ttl: bool) -> Attempt {
        let key = self.key.clone();
        let token = self.token.clone();
        let ttl_ms = self.ttl.as_millis().max(1) as u64;
        let answer: Option<i64> = self
            .link
            .run("lease", move |mut c| async move {
                let script = Script::new(source);
                let mut invocation = script.key(key);
                invocation.arg(token);
                if with_ttl {
                    invocation.arg(ttl_ms);
                }
                invocation.invoke_async(&mut c).await
            })
            .await;
        match answer {
            Some(1) => Attempt::Held,
            Some(_) => Attempt::Taken,
            None => Attempt::Unavailable,
        }
    }

    /// Takes the lease and keeps it renewed in the background until the returned guard is
    /// released or dropped. `None` when another holder has it or Redis cannot answer.
    pub async fn hold(&self) -> Result<HeldLease, Attempt> {
        let sent = Instant::now();
        match self.try_acquire().await {
            Attempt::Held => {}
            other => return Err(other),
        }
        let (lost_tx, lost_rx) = watch::channel(false);
        let lease = self.clone();
        let renewer = tokio::spawn(async move {
            let mut valid_until = sent + lease.ttl;
            let every = lease.ttl / 3;
            loop {
                tokio::time::sleep(
                    every.min(valid_until.saturating_duration_since(Instant::now())),
                )
                .await;
                if Instant::now() >= valid_until {
                    tracing::warn!(lease = %lease.key, "lease expired before it could be renewed; stopping the work it guards");
                    let _ = lost_tx.send(true);
                    return;
                }
                let sent = Instant::now();
                match lease.renew().await {
                    Attempt::Held => valid_until = sent + lease.ttl,
                    Attempt::Taken => {
                        tracing::warn!(lease = %lease.key, "lease taken by another holder; stopping the work it guards");
                        let _ = lost_tx.send(true);
                        return;
                    }
                    // Retried on the next tick, while the last renewal still holds.
                    Attempt::Unavailable => {}
                }
            }
        });
        Ok(HeldLease {
            lease: self.clone(),
            lost: lost_rx,
            renewer,
        })
    }
}

/// A lease this hub holds, renewed in the background.
pub struct HeldLease {
    lease: Lease,
    lost: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl HeldLease {
    /// Whether the lease can no longer be counted on; work must stop.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the lease is lost.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Stops renewing and gives the lease up.
    pub async fn release(self) {
        self.renewer.abort();
        self.lease.release().await;
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        // Not released explicitly: stop renewing and let the TTL end it.
        self.renewer.abort();
    }
}
