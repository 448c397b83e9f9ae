//! The simulated chain: each store's catalogue, its traffic (a daily shape compressed into
//! the run, till baskets in bursts, every movement kind) and the model of what its stock
//! must be; the one shared idempotent producer for the lightweight stores, the follower of
//! `store-commands`, and the drivers of the real agents.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bazaar_shared::kafka::{idempotent_producer, KafkaProperties};
use bazaar_shared::partition::partition_for_key;
use bazaar_shared::{Envelope, HubMessage, Kind, Origin, Reason, SigningKey, Sku, StoreId};
use chrono::{DateTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

/// What a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// Signed envelopes straight to the broker through the shared producer.
    Light,
    /// A real `bazaar-agent` process, driven through its local HTTP API (index into the
    /// chain's agents).
    Agent(usize),
}

/// One intent of the traffic model, turned into a movement by whoever runs the store.
#[derive(Debug, Clone)]
pub enum Intent {
    Sale {
        sku: usize,
        qty: i64,
        till: u32,
    },
    Return {
        sku: usize,
        qty: i64,
    },
    Receipt {
        sku: usize,
        qty: i64,
    },
    Adjustment {
        sku: usize,
        qty: i64,
        reason: Reason,
    },
    /// A shelf count that finds `diff` units more (or fewer) than the store's figure.
    Count {
        sku: usize,
        diff: i64,
    },
    TransferOut {
        sku: usize,
        qty: i64,
        to: usize,
    },
    TransferIn {
        sku: usize,
        qty: i64,
        from: usize,
    },
}

/// A hub-origin message a store applied: its hub_seq, id and when it was applied.
#[derive(Debug, Clone)]
pub struct HubApplied {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub is_movement: bool,
}

pub struct Store {
    pub id: StoreId,
    pub key: SigningKey,
    pub token: String,
    pub runner: Runner,
    /// Indices into the chain catalogue, with their popularity.
    pub skus: Vec<usize>,
    pub popularity: WeightedIndex<f64>,
    /// Relative size (traffic factor, mean 1).
    pub size: f64,
    /// The model: on-hand per sku as the store knows it (store-origin deltas plus the
    /// hub-origin movements it applied).
    pub on_hand: HashMap<String, i64>,
    /// Store-origin movements made: `ids[seq - 1]`, and when each occurred (unix µs).
    pub ids: Vec<Uuid>,
    pub occurred: Vec<i64>,
    /// Store-origin seqs whose delivery (or agent reply) is confirmed.
    pub delivered: u64,
    /// hub_seq → what was applied (lightweight stores; agents keep their own).
    pub hub: HashMap<u64, HubApplied>,
    pub last_hub_seq: u64,
    pub hub_redelivered: u64,
    pub hub_gaps: u64,
    pub hub_forged: u64,
    pub hub_misrouted: u64,
    pub expected_transfers: u64,
    /// Transfers sent to this store whose goods have not "arrived" yet.
    pub arriving: Vec<(Instant, Intent)>,
    /// Hub-origin deltas HQ posted to an agent store (its model has no other way in).
    pub hq_deltas: HashMap<String, i64>,
}

impl Store {
    fn view(&self, sku: &str) -> i64 {
        self.on_hand.get(sku).copied().unwrap_or(0)
    }
}

/// The chain catalogue: sku names.
pub fn catalogue(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("SKU-{i:05}")).collect()
}

/// Each store carries `skus` of the catalogue (between half and one and a half times that,
/// by store), ranked by a Zipf-like popularity: a few fast movers and a long tail.
pub fn store_catalogue(
    rng: &mut StdRng,
    catalogue: usize,
    skus: usize,
) -> (Vec<usize>, WeightedIndex<f64>) {
    let n = rng
        .gen_range((skus / 2).max(1)..=(skus * 3 / 2).max(1))
        .min(catalogue);
    let chosen = rand::seq::index::sample(rng, catalogue, n).into_vec();
    let weights: Vec<f64> = (1..=n).map(|r| 1.0 / (r as f64).powf(1.1)).collect();
    let popularity = WeightedIndex::new(weights).expect("positive weights");
    (chosen, popularity)
}

/// A store's traffic factor: log-normal-ish, mean about 1.
pub fn store_size(rng: &mut StdRng) -> f64 {
    let z: f64 = (0..6).map(|_| rng.gen::<f64>()).sum::<f64>() - 3.0;
    (0.45 * z).exp() / (0.45f64 * 0.45 / 2.0 * 0.5).exp()
}

/// Trading intensity at a fraction of the day (opening 08:00 to 22:00 compressed into the
/// run): a morning trickle, a lunch peak and a larger after-work peak; mean 1 over the day.
pub fn daily_shape(frac: f64) -> f64 {
    fn raw(frac: f64) -> f64 {
        let h = 8.0 + 14.0 * frac.clamp(0.0, 1.0);
        0.35 + 1.0 * (-((h - 12.5) / 1.4).powi(2)).exp() + 1.3 * (-((h - 18.0) / 1.8).powi(2)).exp()
    }
    static MEAN: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let mean = *MEAN.get_or_init(|| (0..1000).map(|i| raw(i as f64 / 999.0)).sum::<f64>() / 1000.0);
    raw(frac) / mean
}

/// Mean movements per till basket (sales lines) and the share of back-office events.
const BACK_OFFICE_SHARE: f64 = 0.12;
const MEAN_BASKET_LINES: f64 = 2.5;

/// The intents one store emits in one event: a basket of sale lines, or one back-office
/// movement (receipt, return, adjustment, count, transfer).
pub fn event(rng: &mut StdRng, store: &Store, me: usize, light: &[usize]) -> Vec<Intent> {
    let pick = |rng: &mut StdRng| store.skus[store.popularity.sample(rng)];
    if rng.gen::<f64>() >= BACK_OFFICE_SHARE {
        // A basket: 1 + geometric lines (mean MEAN_BASKET_LINES).
        let mut lines = 1;
        while rng.gen::<f64>() < 1.0 - 1.0 / MEAN_BASKET_LINES && lines < 12 {
            lines += 1;
        }
        let till = rng.gen_range(1..=6);
        return (0..lines)
            .map(|_| Intent::Sale {
                sku: pick(rng),
                qty: if rng.gen::<f64>() < 0.8 {
                    1
                } else {
                    rng.gen_range(2..=4)
                },
                till,
            })
            .collect();
    }
    let sku = pick(rng);
    let roll: f64 = rng.gen();
    let intent = if roll < 0.35 {
        Intent::Receipt {
            sku,
            qty: rng.gen_range(12..=48),
        }
    } else if roll < 0.50 {
        Intent::Return { sku, qty: 1 }
    } else if roll < 0.65 {
        let reason = [
            Reason::Damage,
            Reason::Theft,
            Reason::Expiry,
            Reason::Correction,
        ][rng.gen_range(0..4)];
        Intent::Adjustment {
            sku,
            qty: -rng.gen_range(1..=2),
            reason,
        }
    } else if roll < 0.85 {
        Intent::Count {
            sku,
            diff: rng.gen_range(-2..=1),
        }
    } else {
        // To another lightweight store (a real agent records its own transfer_in).
        let others: Vec<usize> = light.iter().copied().filter(|&s| s != me).collect();
        if others.is_empty() {
            Intent::Receipt { sku, qty: 24 }
        } else {
            Intent::TransferOut {
                sku,
                qty: rng.gen_range(1..=6),
                to: others[rng.gen_range(0..others.len())],
            }
        }
    };
    vec![intent]
}

/// The sku name an intent moves.
fn sku_of(intent: &Intent) -> usize {
    match intent {
        Intent::Sale { sku, .. }
        | Intent::Return { sku, .. }
        | Intent::Receipt { sku, .. }
        | Intent::Adjustment { sku, .. }
        | Intent::Count { sku, .. }
        | Intent::TransferOut { sku, .. }
        | Intent::TransferIn { sku, .. } => *sku,
    }
}

/// Stock leaving a shelf that holds less becomes a delivery first (a store does not sell
/// what it does not have on record; this keeps the run from measuring an alert storm).
fn guarded(intent: Intent, view: i64) -> Intent {
    let sku = sku_of(&intent);
    let leaving = match &intent {
        Intent::Sale { qty, .. } | Intent::TransferOut { qty, .. } => *qty,
        Intent::Adjustment { qty, .. } => -*qty,
        _ => 0,
    };
    if leaving > 0 && view < leaving {
        Intent::Receipt { sku, qty: 24 }
    } else {
        intent
    }
}

pub struct Chain {
    pub stores: Mutex<Vec<Store>>,
    pub catalogue: Vec<String>,
    pub by_name: HashMap<String, usize>,
    pub names: Vec<StoreId>,
    pub light: Vec<usize>,
    /// Messages handed to the producer and delivered (lightweight), posts answered 201
    /// (agents).
    pub produced: AtomicU64,
    pub delivered: AtomicU64,
    pub delivery_failures: AtomicU64,
    pub agent_failures: AtomicU64,
    pub commands_seen: AtomicU64,
}

impl Chain {
    pub fn lock(&self) -> MutexGuard<'_, Vec<Store>> {
        self.stores.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A message for the shared producer.
pub struct Outgoing {
    pub store: usize,
    pub key: String,
    pub payload: Vec<u8>,
}

/// What the model keeps of a movement store `index` made: its id and time (the exactness
/// and lag checks), its on-hand, and, for a transfer out, the goods arriving at the other
/// store 2 to 5 s later (`spread` picks where in that window).
#[allow(clippy::too_many_arguments)]
fn remember(
    stores: &mut [Store],
    index: usize,
    id: Uuid,
    at: DateTime<Utc>,
    sku_name: String,
    delta: i64,
    intent: Intent,
    spread: u64,
) {
    let store = &mut stores[index];
    store.ids.push(id);
    store.occurred.push(at.timestamp_micros());
    *store.on_hand.entry(sku_name).or_insert(0) += delta;
    if let Intent::TransferOut { sku, qty, to } = intent {
        let arrive = Instant::now() + Duration::from_millis(2000 + spread % 3000);
        stores[to].arriving.push((
            arrive,
            Intent::TransferIn {
                sku,
                qty,
                from: index,
            },
        ));
    }
}

/// Makes the next store-origin movement of a lightweight store from an intent: updates the
/// model and returns the signed wire bytes.
pub fn make_light(
    chain: &Chain,
    stores: &mut [Store],
    index: usize,
    intent: Intent,
    now: DateTime<Utc>,
) -> anyhow::Result<Outgoing> {
    let sku_name = chain.catalogue[sku_of(&intent)].clone();
    let view = stores[index].view(&sku_name);
    let intent = guarded(intent, view);
    let store = &mut stores[index];
    let seq = store.ids.len() as u64 + 1;
    let sku = Sku::parse(sku_name.clone())?;
    let (kind, delta) = match &intent {
        Intent::Sale { qty, .. } => (Kind::Sale, -qty),
        Intent::Return { qty, .. } => (Kind::Return, *qty),
        Intent::Receipt { qty, .. } => (Kind::Receipt, *qty),
        Intent::Adjustment { qty, .. } => (Kind::Adjustment, *qty),
        Intent::Count { diff, .. } => {
            let counted = (view + diff).max(0);
            (
                Kind::Count,
                bazaar_shared::envelope::count_delta(counted, view),
            )
        }
        Intent::TransferOut { qty, .. } => (Kind::TransferOut, -qty),
        Intent::TransferIn { qty, .. } => (Kind::TransferIn, *qty),
    };
    let mut envelope = Envelope::movement(store.id.clone(), Origin::Store, seq, kind, sku, delta);
    envelope.occurred_at = now;
    envelope.hub_watermark = store.last_hub_seq;
    match &intent {
        Intent::Sale { till, .. } => envelope.reference = Some(format!("till{till}/r{seq}")),
        Intent::Adjustment { reason, .. } => envelope.reason = Some(*reason),
        Intent::Count { .. } => envelope.counted = Some(view + delta),
        Intent::Receipt { .. } => envelope.reference = Some(format!("po/{seq}")),
        _ => {}
    }
    if let Intent::TransferOut { to, .. } = &intent {
        envelope.to_store = Some(chain.names[*to].clone());
    }
    if let Intent::TransferIn { from, .. } = &intent {
        envelope.from_store = Some(chain.names[*from].clone());
    }
    let payload = envelope.to_signed_bytes(&store.key)?;
    let key = store.id.to_string();
    remember(
        stores,
        index,
        envelope.id,
        now,
        sku_name,
        delta,
        intent,
        seq,
    );
    Ok(Outgoing {
        store: index,
        key,
        payload,
    })
}

/// The one shared idempotent producer (DESIGN §5's configuration) and its delivery
/// reports. A failed delivery is sent again with the same bytes (the hub's (store, origin,
/// seq) check makes a repeat harmless), through a fresh producer, as the agent does.
pub fn start_producer(
    chain: Arc<Chain>,
    brokers: &str,
    topic: &str,
) -> anyhow::Result<mpsc::Sender<Outgoing>> {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(200_000);
    let retry_tx = tx.clone();
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    let make = move |brokers: &str| -> anyhow::Result<FutureProducer> {
        let mut config = idempotent_producer(
            brokers,
            &KafkaProperties::default(),
            Duration::from_secs(60),
        );
        config
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set("queue.buffering.max.kbytes", "262144");
        Ok(config.create()?)
    };
    let mut producer = Arc::new(make(&brokers)?);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Outgoing, DeliveryFuture)>();
    // Delivery reports.
    let reports_chain = chain.clone();
    let (renew_tx, mut renew_rx) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let mut pending = FuturesUnordered::new();
        loop {
            tokio::select! {
                next = done_rx.recv() => match next {
                    Some((out, fut)) => pending.push(async move { (out, fut.await) }),
                    None if pending.is_empty() => return,
                    None => {}
                },
                Some((out, report)) = pending.next(), if !pending.is_empty() => {
                    match report {
                        Ok(Ok(_)) => {
                            reports_chain.delivered.fetch_add(1, Ordering::Relaxed);
                            reports_chain.lock()[out.store].delivered += 1;
                        }
                        _ => {
                            reports_chain.delivery_failures.fetch_add(1, Ordering::Relaxed);
                            let _ = renew_tx.send(());
                            let retry = retry_tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                let _ = retry.send(out).await;
                            });
                        }
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            if renew_rx.try_recv().is_ok() {
                while renew_rx.try_recv().is_ok() {}
                match make(&brokers) {
                    Ok(p) => producer = Arc::new(p),
                    Err(e) => eprintln!("[load] cannot make a fresh producer: {e:#}"),
                }
            }
            let mut record = FutureRecord::to(&topic)
                .key(out.key.as_str())
                .payload(out.payload.as_slice());
            let future = loop {
                match producer.send_result(record) {
                    Ok(f) => break f,
                    Err((_, back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            };
            let _ = done_tx.send((out, future));
        }
    });
    Ok(tx)
}

/// Follows every partition of `store-commands` for the lightweight stores: each message
/// must sit on its store's partition (murmur2, as an agent reads it), verify with the
/// store's key, and carry hub_seq = last + 1 (repeats are skipped, gaps counted).
pub fn follow_commands(
    chain: Arc<Chain>,
    brokers: &str,
    topic: &str,
    partitions: i32,
    group: &str,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = bazaar_shared::kafka::base_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    tokio::spawn(async move {
        loop {
            let message = match consumer.recv().await {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("[load] store-commands consumer: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let at = Utc::now();
            let partition = message.partition();
            let Some(payload) = message.payload() else {
                continue;
            };
            let Ok(decoded) = HubMessage::decode(payload) else {
                eprintln!("[load] an undecodable message on store-commands");
                continue;
            };
            chain.commands_seen.fetch_add(1, Ordering::Relaxed);
            let Some(&index) = chain.by_name.get(decoded.store().as_str()) else {
                continue;
            };
            let mut stores = chain.lock();
            let store = &mut stores[index];
            if store.runner != Runner::Light {
                continue;
            }
            if partition != partition_for_key(store.id.as_str().as_bytes(), partitions) {
                store.hub_misrouted += 1;
            }
            if !decoded.is_authentic(&store.key) {
                store.hub_forged += 1;
                continue;
            }
            let seq = decoded.hub_seq();
            if seq <= store.last_hub_seq {
                store.hub_redelivered += 1;
                continue;
            }
            if seq > store.last_hub_seq + 1 {
                store.hub_gaps += seq - store.last_hub_seq - 1;
            }
            store.last_hub_seq = seq;
            let (id, is_movement) = match &decoded {
                HubMessage::Movement(r) => {
                    *store.on_hand.entry(r.envelope.sku.to_string()).or_insert(0) +=
                        r.envelope.delta;
                    (r.envelope.id, true)
                }
                HubMessage::Command(c) => {
                    if matches!(
                        c.command.body,
                        bazaar_shared::CommandBody::ExpectedTransfer { .. }
                    ) {
                        store.expected_transfers += 1;
                    }
                    (c.command.id, false)
                }
            };
            store.hub.insert(
                seq,
                HubApplied {
                    id,
                    at,
                    is_movement,
                },
            );
        }
    });
    Ok(())
}

/// One real agent's driver: posts its intents in order through the agent's HTTP API and
/// keeps the model from the replies (the agent numbers and prices the movement).
pub fn drive_agent(chain: Arc<Chain>, index: usize, url: String) -> mpsc::UnboundedSender<Intent> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Intent>();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(intent) = rx.recv().await {
            n += 1;
            let (store_name, sku_name, view) = {
                let stores = chain.lock();
                let s = &stores[index];
                let sku = chain.catalogue[sku_of(&intent)].clone();
                (s.id.to_string(), sku.clone(), s.view(&sku))
            };
            let intent = guarded(intent, view);
            let body = match &intent {
                Intent::Sale { qty, till, .. } => {
                    json!({"kind": "sale", "sku": sku_name, "qty": qty, "ref": format!("till{till}/{n}")})
                }
                Intent::Return { qty, .. } => {
                    json!({"kind": "return", "sku": sku_name, "qty": qty})
                }
                Intent::Receipt { qty, .. } => {
                    json!({"kind": "receipt", "sku": sku_name, "qty": qty})
                }
                Intent::Adjustment { qty, reason, .. } => {
                    json!({"kind": "adjustment", "sku": sku_name, "qty": qty, "reason": reason.as_str()})
                }
                Intent::Count { diff, .. } => {
                    json!({"kind": "count", "sku": sku_name, "counted": (view + diff).max(0)})
                }
                Intent::TransferOut { qty, to, .. } => {
                    let to_name = chain.names[*to].to_string();
                    json!({"kind": "transfer_out", "sku": sku_name, "qty": qty, "to_store": to_name})
                }
                Intent::TransferIn { qty, from, .. } => {
                    let from_name = chain.names[*from].to_string();
                    json!({"kind": "transfer_in", "sku": sku_name, "qty": qty, "from_store": from_name})
                }
            };
            let idem = format!("load-{store_name}-{n}");
            // Retried with the same key until the agent answers: never posted twice.
            let mut wait = Duration::from_millis(100);
            let reply: Value = loop {
                let sent = client
                    .post(format!("{url}/v1/movements"))
                    .header("Idempotency-Key", &idem)
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 200 => {
                        break r.json().await.unwrap_or(Value::Null)
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        eprintln!("[load] agent {store_name} answered {status}: {text}");
                        chain.agent_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("[load] agent {store_name}: {e}");
                        chain.agent_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            };
            // The agent answers with the movement itself (DESIGN §6: `201 {movement}`).
            let movement = reply.get("movement").unwrap_or(&reply);
            let delta = movement["delta"].as_i64().unwrap_or(0);
            let id = movement["id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .unwrap_or_default();
            let seq = movement["seq"].as_u64().unwrap_or(0);
            let mut stores = chain.lock();
            let s = &mut stores[index];
            if seq as usize != s.ids.len() + 1 {
                eprintln!(
                    "[load] agent {store_name} numbered a movement {seq}, expected {}",
                    s.ids.len() + 1
                );
            }
            s.delivered += 1;
            remember(
                &mut stores,
                index,
                id,
                Utc::now(),
                sku_name,
                delta,
                intent,
                n,
            );
            chain.delivered.fetch_add(1, Ordering::Relaxed);
        }
    });
    tx
}

/// Where a store's movements go.
pub struct Sinks {
    pub producer: mpsc::Sender<Outgoing>,
    pub agents: Vec<mpsc::UnboundedSender<Intent>>,
}

/// Hands an intent to whoever runs the store.
pub async fn dispatch(
    chain: &Chain,
    sinks: &Sinks,
    index: usize,
    intent: Intent,
) -> anyhow::Result<()> {
    chain.produced.fetch_add(1, Ordering::Relaxed);
    let runner = chain.lock()[index].runner;
    match runner {
        Runner::Agent(a) => {
            sinks.agents[a]
                .send(intent)
                .map_err(|_| anyhow::anyhow!("agent driver gone"))?;
        }
        Runner::Light => {
            let out = {
                let mut stores = chain.lock();
                make_light(chain, &mut stores, index, intent, Utc::now())?
            };
            sinks
                .producer
                .send(out)
                .await
                .map_err(|_| anyhow::anyhow!("producer gone"))?;
        }
    }
    Ok(())
}

/// Goods of transfers that have arrived (due), as transfer_in intents, store by store.
pub fn arrived(chain: &Chain, all: bool) -> Vec<(usize, Intent)> {
    let now = Instant::now();
    let mut out = Vec::new();
    let mut stores = chain.lock();
    for (i, s) in stores.iter_mut().enumerate() {
        if s.arriving.is_empty() {
            continue;
        }
        let (due, later): (Vec<_>, Vec<_>) =
            s.arriving.drain(..).partition(|(at, _)| all || *at <= now);
        s.arriving = later;
        out.extend(due.into_iter().map(|(_, intent)| (i, intent)));
    }
    out
}

/// Runs the traffic for `duration` at `rate` movements per second per store (on average
/// over the compressed day), ticking every 100 ms. `on_tick` runs every tick (the kill
/// schedule, progress).
pub async fn traffic(
    chain: &Arc<Chain>,
    sinks: &Sinks,
    rate: f64,
    duration: Duration,
    seed: u64,
    mut on_tick: impl FnMut(Duration),
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let tick = Duration::from_millis(100);
    let started = Instant::now();
    let mut next = started;
    let per_event = (1.0 - BACK_OFFICE_SHARE) * MEAN_BASKET_LINES + BACK_OFFICE_SHARE;
    let sizes: Vec<f64> = chain.lock().iter().map(|s| s.size).collect();
    while started.elapsed() < duration {
        next += tick;
        let frac = started.elapsed().as_secs_f64() / duration.as_secs_f64();
        let shape = daily_shape(frac);
        let mut batch: Vec<(usize, Intent)> = arrived(chain, false);
        {
            let stores = chain.lock();
            for (i, size) in sizes.iter().enumerate() {
                let p = rate * size * shape * tick.as_secs_f64() / per_event;
                // Poisson arrivals of events within the tick.
                let mut events = 0;
                let mut left = p;
                while left > 0.0 {
                    if rng.gen::<f64>() < left.min(1.0) {
                        events += 1;
                    }
                    left -= 1.0;
                }
                for _ in 0..events {
                    for intent in event(&mut rng, &stores[i], i, &chain.light) {
                        batch.push((i, intent));
                    }
                }
            }
        }
        for (i, intent) in batch {
            dispatch(chain, sinks, i, intent).await?;
        }
        on_tick(started.elapsed());
        tokio::time::sleep_until(next.into()).await;
    }
    // Goods still on the road arrive now.
    for (i, intent) in arrived(chain, true) {
        dispatch(chain, sinks, i, intent).await?;
    }
    Ok(())
}
