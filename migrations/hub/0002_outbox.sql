-- The hub's outbox (DESIGN §5): every command for a store — hub-origin movement,
-- expected-transfer notice, bulk-state notice, re-snapshot request — is written here,
-- signed, in the same transaction as the change it announces, numbered by the store's one
-- gapless counter `store_sync.last_hub_seq`. The relay (one per cluster, holding a Redis
-- lease) publishes unpublished rows per store in hub_seq order and stamps `published_at`
-- after the broker acknowledged them. Published rows stay: agents fetch missing ranges
-- from here (`GET /v1/stores/{store}/commands?after=`). Retention is a later concern.
CREATE TABLE outbox (
    store        VARCHAR(64)     NOT NULL,
    hub_seq      BIGINT UNSIGNED NOT NULL,
    kind         VARCHAR(32)     NOT NULL,
    id           CHAR(36)        NOT NULL,
    payload      BLOB            NOT NULL,
    created_at   DATETIME(6)     NOT NULL,
    published_at DATETIME(6)     NULL,
    PRIMARY KEY (store, hub_seq),
    UNIQUE KEY outbox_id (id),
    KEY outbox_unpublished (published_at, store, hub_seq)
) ENGINE = InnoDB;

-- An admin's `Idempotency-Key` on hub-origin writes: a retry returns the original reply;
-- the same key with another request is refused.
CREATE TABLE hub_idempotency (
    store        VARCHAR(64)  NOT NULL,
    idem_key     VARCHAR(128) NOT NULL,
    request_hash CHAR(64)     NOT NULL,
    hub_seq      BIGINT UNSIGNED NOT NULL,
    response     JSON         NOT NULL,
    created_at   DATETIME(6)  NOT NULL,
    PRIMARY KEY (store, idem_key)
) ENGINE = InnoDB;
