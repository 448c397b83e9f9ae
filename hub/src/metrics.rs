//! `/metrics` in the Prometheus text format (0.0.4), from a small registry of our own: a
//! counter and a latency histogram per (route, method, status), plus the counters the rest
//! of the hub keeps (cache, rate limits, Redis, ingest). Routes are labelled by their
//! pattern (`/v1/stores/{store}`), never by the raw path, so the series stay few.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct Series {
    count: u64,
    sum: f64,
    /// Per bucket (not cumulative); the last slot is +Inf.
    buckets: [u64; BUCKETS.len() + 1],
}

#[derive(Default)]
pub struct HttpMetrics {
    series: Mutex<BTreeMap<(&'static str, &'static str, u16), Series>>,
}

impl HttpMetrics {
    pub fn observe(&self, path: &str, method: &str, status: u16, elapsed: Duration) {
        let route = route_of(path);
        let seconds = elapsed.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let s = series
            .entry((route, method_of(method), status))
            .or_default();
        s.count += 1;
        s.sum += seconds;
        s.buckets[slot] += 1;
    }

    fn render(&self, out: &mut String) {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        out.push_str("# HELP bazaar_hub_http_requests_total HTTP requests answered, by route pattern, method and status.\n");
        out.push_str("# TYPE bazaar_hub_http_requests_total counter\n");
        for ((route, method, status), s) in series.iter() {
            let _ = writeln!(out, "bazaar_hub_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}", s.count);
        }
        out.push_str("# HELP bazaar_hub_http_request_duration_seconds Time to answer, by route pattern, method and status.\n");
        out.push_str("# TYPE bazaar_hub_http_request_duration_seconds histogram\n");
        for ((route, method, status), s) in series.iter() {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i];
                let _ = writeln!(out, "bazaar_hub_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "bazaar_hub_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "bazaar_hub_http_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "bazaar_hub_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
    }
}

fn method_of(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// Where ingest stands in one partition, as librdkafka last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    /// The partition's high watermark: the offset the next message written will get.
    pub high_watermark: i64,
    /// The consumer's position: the offset of the next message it will hand to ingest.
    pub position: i64,
}

impl PartitionLag {
    /// Messages written but not yet consumed.
    pub fn lag(&self) -> i64 {
        (self.high_watermark - self.position).max(0)
    }
}

/// One lag sample: by (topic, partition).
pub type PartitionLags = BTreeMap<(String, i32), PartitionLag>;

/// Ingest lag per assigned partition. librdkafka samples it on its own thread (its
/// statistics, see [`crate::ingest::IngestContext`]), so measuring never blocks or slows
/// the ingest loop; this only keeps the latest sample for `/metrics`.
#[derive(Clone, Default)]
pub struct IngestLag {
    latest: Arc<Mutex<Option<(Instant, PartitionLags)>>>,
}

impl IngestLag {
    /// Replaces the sample: partitions no longer assigned to this hub disappear.
    pub fn record(&self, partitions: PartitionLags) {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), partitions));
    }

    /// The latest sample and its age; `None` before the first.
    pub fn latest(&self) -> Option<(Duration, PartitionLags)> {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(at, partitions)| (at.elapsed(), partitions.clone()))
    }

    fn render(&self, out: &mut String) {
        let Some((age, partitions)) = self.latest() else {
            return;
        };
        out.push_str("# HELP bazaar_hub_ingest_lag_messages Messages in each partition this hub consumes that it has not consumed yet (high watermark - position).\n# TYPE bazaar_hub_ingest_lag_messages gauge\n");
        for ((topic, partition), p) in &partitions {
            let _ = writeln!(
                out,
                "bazaar_hub_ingest_lag_messages{{topic=\"{topic}\",partition=\"{partition}\"}} {}",
                p.lag()
            );
        }
        out.push_str("# HELP bazaar_hub_ingest_high_watermark The high watermark of each partition this hub consumes.\n# TYPE bazaar_hub_ingest_high_watermark gauge\n");
        for ((topic, partition), p) in &partitions {
            let _ = writeln!(out, "bazaar_hub_ingest_high_watermark{{topic=\"{topic}\",partition=\"{partition}\"}} {}", p.high_watermark);
        }
        scalar(
            out,
            "bazaar_hub_ingest_lag_age_seconds",
            "gauge",
            "Age of the lag sample; it grows when librdkafka stops reporting (consumer stuck or gone).",
            age.as_secs_f64(),
        );
    }
}

/// The route pattern a path belongs to: the path template of the documented operation it
/// matches ([`crate::api::docs`], the registry behind `/openapi.json`), so labels and the
/// document never disagree and a new route is labelled once it is documented. Paths no
/// route serves are `other`, so a scan cannot grow the series.
pub fn route_of(path: &str) -> &'static str {
    static TEMPLATES: OnceLock<Vec<(&'static str, Vec<&'static str>)>> = OnceLock::new();
    let templates = TEMPLATES.get_or_init(|| {
        let paths: std::collections::BTreeSet<&'static str> =
            crate::api::docs().iter().map(|op| op.path).collect();
        let mut templates: Vec<(&'static str, Vec<&'static str>)> = paths
            .into_iter()
            .map(|p| (p, p.trim_matches('/').split('/').collect()))
            .collect();
        // Literal segments win over parameters, from the left: `/v1/forecasts/runs/{id}`
        // before `/v1/forecasts/{store}/{sku}`.
        templates.sort_by_key(|(_, segments)| {
            segments
                .iter()
                .map(|s| s.starts_with('{'))
                .collect::<Vec<bool>>()
        });
        templates
    });
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    templates
        .iter()
        .find(|(_, template)| {
            template.len() == segments.len()
                && template.iter().zip(&segments).all(|(t, s)| {
                    if t.starts_with('{') {
                        !s.is_empty()
                    } else {
                        t == s
                    }
                })
        })
        .map_or("other", |(template, _)| template)
}

/// One counter or gauge line with its HELP and TYPE.
pub fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Everything `/metrics` shows, rendered from the hub's state.
pub fn render(hub: &crate::startup::Hub) -> String {
    let mut out = String::with_capacity(4096);
    hub.http_metrics.render(&mut out);
    let (hits, misses) = hub.cache.counts();
    scalar(
        &mut out,
        "bazaar_hub_stock_cache_hits_total",
        "counter",
        "Stock reads answered from Redis.",
        hits,
    );
    scalar(
        &mut out,
        "bazaar_hub_stock_cache_misses_total",
        "counter",
        "Stock reads that went to MySQL (not cached, or Redis down).",
        misses,
    );
    let (token_hits, token_misses) = hub.tokens.stats();
    scalar(
        &mut out,
        "bazaar_hub_token_cache_hits_total",
        "counter",
        "Bearer tokens recognised (or refused) from this hub's memory, without MySQL.",
        token_hits,
    );
    scalar(
        &mut out,
        "bazaar_hub_token_cache_misses_total",
        "counter",
        "Bearer tokens looked up in MySQL: first seen, older than 5 s, or forgotten when their store's token changed.",
        token_misses,
    );
    scalar(
        &mut out,
        "bazaar_hub_redis_up",
        "gauge",
        "1 while this hub is connected to Redis.",
        u8::from(hub.redis.is_up()),
    );
    scalar(
        &mut out,
        "bazaar_hub_redis_failures_total",
        "counter",
        "Redis operations that found it unreachable.",
        hub.redis.failures(),
    );
    scalar(
        &mut out,
        "bazaar_hub_stock_cache_generation",
        "gauge",
        "The cache generation this hub started at its last Redis connection.",
        hub.redis.generation(),
    );
    let _ = writeln!(
        out,
        "# HELP bazaar_hub_rate_limited_total Requests refused with 429, by route.\n# TYPE bazaar_hub_rate_limited_total counter\nbazaar_hub_rate_limited_total{{route=\"{}\"}} {}",
        hub.get_stock_limit.route(),
        hub.get_stock_limit.denied()
    );
    hub.reads.render_metrics(&mut out);
    hub.alerting.render_metrics(&mut out);
    hub.forecasts.render_metrics(&mut out);
    hub.relay.render_metrics(&mut out);
    hub.ingest.lag().render(&mut out);
    let [applied, duplicates, held, parked] = hub.ingest.totals();
    scalar(
        &mut out,
        "bazaar_hub_movements_applied_total",
        "counter",
        "Movements applied to the ledger.",
        applied,
    );
    scalar(
        &mut out,
        "bazaar_hub_movements_duplicates_total",
        "counter",
        "Movements skipped as already applied.",
        duplicates,
    );
    scalar(
        &mut out,
        "bazaar_hub_movements_held_total",
        "counter",
        "Movements held until a gap in seq fills.",
        held,
    );
    scalar(
        &mut out,
        "bazaar_hub_movements_parked_total",
        "counter",
        "Movements parked (bad signature, unknown store, malformed, conflict, id reused, too far ahead, failed on their own).",
        parked,
    );
    let [isolations, capped, transient, rejoins] = hub.ingest.more_totals();
    scalar(
        &mut out,
        "bazaar_hub_ingest_isolations_total",
        "counter",
        "Sub-batches split off to find a message that fails on its own (it is then parked).",
        isolations,
    );
    scalar(
        &mut out,
        "bazaar_hub_transfer_notices_capped_total",
        "counter",
        "Expected-transfer notices not sent: one store passed BAZAAR_HUB_MAX_TRANSFER_NOTICES_PER_DAY for another.",
        capped,
    );
    scalar(
        &mut out,
        "bazaar_hub_ingest_transient_failures_total",
        "counter",
        "Batches tried again because the database was away or busy.",
        transient,
    );
    scalar(
        &mut out,
        "bazaar_hub_ingest_rejoins_total",
        "counter",
        "Times this hub joined its consumer group again as a new member: partitions it did not hold had messages waiting and no progress.",
        rejoins,
    );
    scalar(
        &mut out,
        "bazaar_hub_ingest_running",
        "gauge",
        "1 while this hub's consumer loop runs.",
        u8::from(
            hub.ingest
                .running
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
    );
    let last = hub
        .ingest
        .last_batch_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    if last > 0 {
        scalar(
            &mut out,
            "bazaar_hub_ingest_last_batch_age_seconds",
            "gauge",
            "Seconds since this hub last applied a batch.",
            (chrono::Utc::now().timestamp_millis() - last as i64).max(0) as f64 / 1000.0,
        );
    }
    scalar(
        &mut out,
        "bazaar_hub_max_held_ahead",
        "gauge",
        "BAZAAR_HUB_MAX_HELD_AHEAD: messages further ahead of a store's applied seq are parked.",
        hub.config.limits.max_held_ahead,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_labelled_by_pattern() {
        assert_eq!(
            route_of("/v1/stores/S1/stock/MILK"),
            "/v1/stores/{store}/stock/{sku}"
        );
        assert_eq!(
            route_of("/get-stock/S1/MILK"),
            "/get-stock/{store_id}/{product_id}"
        );
        assert_eq!(route_of("/v1/stores"), "/v1/stores");
        assert_eq!(route_of("/v1/movements"), "/v1/movements");
        assert_eq!(route_of("/v1/stores/S1/stock"), "/v1/stores/{store}/stock");
        assert_eq!(route_of("/v1/forecasts/runs/7"), "/v1/forecasts/runs/{id}");
        assert_eq!(
            route_of("/v1/forecasts/S1/MILK"),
            "/v1/forecasts/{store}/{sku}"
        );
        assert_eq!(route_of("/nope/x/y/z"), "other");
        assert_eq!(route_of("/v1/stores//stock"), "other");
        for op in crate::api::docs() {
            let concrete = op.path.replace('{', "x").replace('}', "");
            assert_eq!(route_of(&concrete), op.path, "{concrete}");
        }
    }

    #[test]
    fn lag_is_rendered_per_partition_and_never_negative() {
        let lag = IngestLag::default();
        let mut out = String::new();
        lag.render(&mut out);
        assert!(out.is_empty(), "nothing before the first sample");
        lag.record(BTreeMap::from([
            (
                ("m".to_owned(), 0),
                PartitionLag {
                    high_watermark: 10,
                    position: 4,
                },
            ),
            (
                ("m".to_owned(), 1),
                PartitionLag {
                    high_watermark: 3,
                    position: 5,
                },
            ),
        ]));
        lag.render(&mut out);
        assert!(
            out.contains("bazaar_hub_ingest_lag_messages{topic=\"m\",partition=\"0\"} 6\n"),
            "{out}"
        );
        assert!(
            out.contains("bazaar_hub_ingest_lag_messages{topic=\"m\",partition=\"1\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("bazaar_hub_ingest_high_watermark{topic=\"m\",partition=\"0\"} 10\n"),
            "{out}"
        );
        assert!(out.contains("bazaar_hub_ingest_lag_age_seconds "), "{out}");
    }

    #[test]
    fn the_histogram_is_cumulative() {
        let m = HttpMetrics::default();
        m.observe("/healthz", "GET", 200, Duration::from_micros(300));
        m.observe("/healthz", "GET", 200, Duration::from_millis(3));
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("bazaar_hub_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 2"), "{out}");
        assert!(out.contains("le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("le=\"+Inf\"} 2\n"), "{out}");
    }
}
