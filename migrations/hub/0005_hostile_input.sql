-- Issue 9: nothing one message or one request does can stop the chain.

-- Identifiers are exact: store ids and skus compare as at the agent (SQLite compares TEXT
-- byte for byte). MariaDB's default collation is case-insensitive, which merged `milk` and
-- `MILK` into one row. Every table holding an identifier is converted to a case- and
-- accent-sensitive collation: for the identifier alphabet [A-Za-z0-9_-] it tells every
-- string apart as bytes do. Not a `_bin` collation: those columns carry MySQL's BINARY flag
-- and sqlx 0.8 then refuses to decode them as text (sqlx issue 3387).
ALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE stores CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE products CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE stock CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE movements CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE store_sync CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE held_events CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE daily_sales CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE parked_events CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE thresholds CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE alerts CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE forecasts CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE reorder_suggestions CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE outbox CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE hub_idempotency CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE alert_events CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
ALTER TABLE threshold_versions CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;

-- A void consumes the seq of a parked movement (DESIGN §5); a movement whose reported time
-- was outside [2000-01-01, now + 1 day] is recorded at the hub's time, the reported one kept.
ALTER TABLE movements
    ADD COLUMN voids CHAR(36) NULL,
    ADD COLUMN reported_occurred_at VARCHAR(64) NULL;

-- On-hand is bounded (±1e12, the wire's MAX_QUANTITY): a movement past it fails on its own
-- and is parked, never an overflow that stops a batch.
ALTER TABLE stock ADD CONSTRAINT stock_on_hand_bound
    CHECK (on_hand BETWEEN -1000000000000 AND 1000000000000);

-- Parked payloads are kept capped (the first 4 KiB, the full length and a SHA-256), so
-- no INSERT of junk can pass max_allowed_packet; `consumed_seq` says the seq was consumed
-- by a void (the agent then parks its own copy).
ALTER TABLE parked_events
    ADD COLUMN payload_len    BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN payload_sha256 CHAR(64) NULL,
    ADD COLUMN consumed_seq   BOOLEAN NOT NULL DEFAULT FALSE;

-- Expected-transfer notices one store caused for another, per UTC day (a bound).
CREATE TABLE transfer_notice_counts (
    from_store VARCHAR(64) NOT NULL,
    to_store   VARCHAR(64) NOT NULL,
    day        DATE        NOT NULL,
    notices    BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (from_store, to_store, day)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_uca1400_as_cs;
