//! Rate limits: a GCRA token bucket (burst = rate) per client IP and route (DESIGN §7).
//!
//! The bucket lives in Redis (`{prefix}ratelimit:{route}:{ip}`, one theoretical arrival
//! time in microseconds of Redis's own clock, expiring when the bucket is full again) and is
//! updated by one Lua script, so every hub instance shares it. When Redis is unreachable each
//! hub keeps its own buckets in memory: with N hubs behind a balancer a client then gets up
//! to N × the limit. A rate of 0 turns the limit off.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::Script;

use crate::redis_link::RedisLink;

/// KEYS: bucket. ARGV: emission interval in µs, tolerance (burst × interval) in µs.
/// Returns `{1, 0}` allowed or `{0, µs until the next request is allowed}`.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny { retry_after: Duration },
}

impl Decision {
    /// Whole seconds for `Retry-After`, at least 1.
    pub fn retry_after_secs(retry_after: Duration) -> u64 {
        retry_after.as_micros().div_ceil(1_000_000).max(1) as u64
    }
}

#[derive(Clone)]
pub struct RateLimiter {
    route: &'static str,
    per_second: u32,
    link: Arc<RedisLink>,
    script: Arc<Script>,
    local: Arc<Mutex<HashMap<IpAddr, Instant>>>,
    denied: Arc<AtomicU64>,
}

impl RateLimiter {
    pub fn new(route: &'static str, per_second: u32, link: Arc<RedisLink>) -> RateLimiter {
        RateLimiter {
            route,
            per_second,
            link,
            script: Arc::new(Script::new(GCRA)),
            local: Arc::default(),
            denied: Arc::default(),
        }
    }

    pub fn route(&self) -> &'static str {
        self.route
    }

    /// Requests per second per client; 0 = unlimited.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Requests refused since start.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    fn interval(&self) -> Duration {
        Duration::from_micros(1_000_000 / u64::from(self.per_second.max(1)))
    }

    /// Burst = rate: a full bucket takes one second's worth of requests at once.
    fn tolerance(&self) -> Duration {
        self.interval() * self.per_second
    }

    pub async fn check(&self, client: IpAddr) -> Decision {
        if self.per_second == 0 {
            return Decision::Allow;
        }
        let decision = match self.check_shared(client).await {
            Some(d) => d,
            None => self.check_local(client, Instant::now()),
        };
        if decision != Decision::Allow {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
        decision
    }

    async fn check_shared(&self, client: IpAddr) -> Option<Decision> {
        let key = self.link.key(&format!("ratelimit:{}:{client}", self.route));
        let (interval, tolerance) = (
            self.interval().as_micros() as u64,
            self.tolerance().as_micros() as u64,
        );
        let script = self.script.clone();
        let reply: (i64, i64) = self
            .link
            .run("rate limit", |mut c| async move {
                script
                    .key(key)
                    .arg(interval)
                    .arg(tolerance)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Some(match reply {
            (1, _) => Decision::Allow,
            (_, wait) => Decision::Deny {
                retry_after: Duration::from_micros(wait.max(1) as u64),
            },
        })
    }

    /// The same GCRA, in this process only (Redis is down).
    fn check_local(&self, client: IpAddr, now: Instant) -> Decision {
        let mut buckets = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() > 100_000 {
            buckets.retain(|_, tat| *tat > now);
        }
        let tat = buckets
            .get(&client)
            .copied()
            .filter(|t| *t > now)
            .unwrap_or(now);
        let new_tat = tat + self.interval();
        let allow_at = now + self.tolerance();
        if new_tat > allow_at {
            return Decision::Deny {
                retry_after: new_tat - allow_at,
            };
        }
        buckets.insert(client, new_tat);
        Decision::Allow
    }
}

/// The client a request counts against: the direct peer, unless the peer is a trusted
/// proxy; then the right-most `X-Forwarded-For` entry that is not itself a trusted proxy
/// (entries to its left could be forged by the client). No peer at all (in-process tests)
/// counts as 0.0.0.0.
pub fn client_ip(
    peer: Option<SocketAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpAddr],
) -> IpAddr {
    let Some(peer) = peer.map(|p| p.ip().to_canonical()) else {
        return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    };
    if !trusted.contains(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut last_parsed = None;
    for entry in header.rsplit(',') {
        let Ok(ip) = entry.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
            // A malformed entry: nothing left of it can be trusted.
            break;
        };
        if !trusted.contains(&ip) {
            return ip;
        }
        last_parsed = Some(ip);
    }
    last_parsed.unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP")
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        let peer = |s: &str| Some(SocketAddr::new(ip(s), 40000));
        assert_eq!(
            client_ip(peer("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(peer("10.0.0.1"), Some("1.2.3.4"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(
                peer("10.0.0.1"),
                Some("6.6.6.6, 1.2.3.4, 10.0.0.2"),
                &trusted
            ),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(peer("10.0.0.1"), Some("garbage"), &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(client_ip(peer("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
        assert_eq!(
            client_ip(peer("::ffff:203.0.113.9"), None, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(client_ip(None, Some("1.2.3.4"), &trusted), ip("0.0.0.0"));
    }

    #[test]
    fn the_local_bucket_allows_a_burst_of_rate_then_one_per_interval() {
        let link = Arc::new(RedisLink::new("redis://127.0.0.1:1", "t:").expect("a Redis URL"));
        let limiter = RateLimiter::new("get-stock", 5, link);
        let client = ip("192.0.2.1");
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.check_local(client, start), Decision::Allow);
        }
        let Decision::Deny { retry_after } = limiter.check_local(client, start) else {
            panic!("the 6th is refused")
        };
        assert_eq!(retry_after, Duration::from_millis(200));
        assert_eq!(Decision::retry_after_secs(retry_after), 1);
        assert_eq!(
            limiter.check_local(ip("192.0.2.2"), start),
            Decision::Allow,
            "buckets are per client"
        );
        assert_eq!(
            limiter.check_local(client, start + Duration::from_millis(200)),
            Decision::Allow
        );
        assert!(matches!(
            limiter.check_local(client, start + Duration::from_millis(200)),
            Decision::Deny { .. }
        ));
    }
}
