-- Agent schema v1 (DESIGN §6). Applied by bazaar-agent at start-up; PRAGMA user_version
-- records the last migration applied.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE products (
    sku           TEXT PRIMARY KEY,
    name          TEXT,
    unit          TEXT,
    reorder_point INTEGER,
    max_stock     INTEGER
) STRICT;

CREATE TABLE stock (
    sku        TEXT PRIMARY KEY,
    on_hand    INTEGER NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

-- The local ledger and, through `state`, the outbox. Rows are immutable but for their
-- sync columns (state, attempts, last_error, sent_at) and, once at bootstrap, their seq.
CREATE TABLE movements (
    local_id      INTEGER PRIMARY KEY,
    origin        TEXT NOT NULL CHECK (origin IN ('store', 'hub')),
    seq           INTEGER,
    hub_seq       INTEGER,
    id            TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL,
    sku           TEXT NOT NULL,
    delta         INTEGER NOT NULL,
    counted       INTEGER,
    hub_watermark INTEGER NOT NULL,
    reason        TEXT,
    ref           TEXT,
    to_store      TEXT,
    from_store    TEXT,
    occurred_at   TEXT NOT NULL,
    recorded_at   TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'acked', 'parked', 'applied')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    sent_at       TEXT,
    CHECK ((origin = 'store') = (seq IS NOT NULL)),
    CHECK ((origin = 'hub') = (hub_seq IS NOT NULL))
) STRICT;

CREATE UNIQUE INDEX movements_store_seq ON movements (seq) WHERE origin = 'store';
CREATE UNIQUE INDEX movements_hub_seq ON movements (hub_seq) WHERE origin = 'hub';
-- The outbox: only unacknowledged rows are indexed, so the index stays small however long
-- the ledger grows.
CREATE INDEX movements_outbox ON movements (state, seq) WHERE state IN ('pending', 'sent');
CREATE INDEX movements_unacked_sku ON movements (sku) WHERE state IN ('pending', 'sent');

CREATE TABLE idempotency (
    key          TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    movement_id  TEXT NOT NULL REFERENCES movements (id),
    created_at   TEXT NOT NULL
) STRICT;

CREATE TABLE alerts (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    sku         TEXT,
    severity    TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    message     TEXT NOT NULL,
    raised_at   TEXT NOT NULL,
    resolved_at TEXT
) STRICT;

CREATE UNIQUE INDEX alerts_open ON alerts (kind, ifnull(sku, '')) WHERE resolved_at IS NULL;
