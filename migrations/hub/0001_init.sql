-- Hub schema v1 (DESIGN §7). Embedded in bazaar-hub and applied by `bazaar-hub migrate`
-- (and by `serve` at start-up).

CREATE TABLE stores (
    id           VARCHAR(64)  NOT NULL PRIMARY KEY,
    name         VARCHAR(200) NULL,
    token_hash   CHAR(64)     NOT NULL,
    signing_key  VARCHAR(64)  NOT NULL,
    created_at   DATETIME(6)  NOT NULL,
    last_seen_at DATETIME(6)  NULL,
    UNIQUE KEY stores_token_hash (token_hash)
) ENGINE = InnoDB;

CREATE TABLE products (
    sku            VARCHAR(64)  NOT NULL PRIMARY KEY,
    name           VARCHAR(200) NULL,
    unit           VARCHAR(16)  NOT NULL DEFAULT 'piece',
    lead_time_days INT          NOT NULL DEFAULT 7,
    pack_size      INT          NOT NULL DEFAULT 1,
    created_at     DATETIME(6)  NOT NULL
) ENGINE = InnoDB;

CREATE TABLE stock (
    store      VARCHAR(64) NOT NULL,
    sku        VARCHAR(64) NOT NULL,
    on_hand    BIGINT      NOT NULL,
    version    BIGINT      NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (store, sku),
    KEY stock_sku (sku)
) ENGINE = InnoDB;

-- The immutable audit ledger: one row per movement, exactly once.
CREATE TABLE movements (
    store         VARCHAR(64)          NOT NULL,
    origin        ENUM ('store', 'hub') NOT NULL,
    seq           BIGINT UNSIGNED      NOT NULL,
    id            CHAR(36)             NOT NULL,
    kind          VARCHAR(16)          NOT NULL,
    sku           VARCHAR(64)          NOT NULL,
    delta         BIGINT               NOT NULL,
    counted       BIGINT               NULL,
    hub_watermark BIGINT UNSIGNED      NOT NULL DEFAULT 0,
    reason        VARCHAR(16)          NULL,
    ref           VARCHAR(128)         NULL,
    to_store      VARCHAR(64)          NULL,
    from_store    VARCHAR(64)          NULL,
    occurred_at   DATETIME(6)          NOT NULL,
    received_at   DATETIME(6)          NOT NULL,
    PRIMARY KEY (store, origin, seq),
    UNIQUE KEY movements_id (id),
    KEY movements_received (received_at),
    KEY movements_store_sku (store, sku, origin, seq)
) ENGINE = InnoDB;

CREATE TABLE store_sync (
    store           VARCHAR(64)     NOT NULL PRIMARY KEY,
    last_seq        BIGINT UNSIGNED NOT NULL DEFAULT 0,
    last_hub_seq    BIGINT UNSIGNED NOT NULL DEFAULT 0,
    last_event_at   DATETIME(6)     NULL,
    last_applied_at DATETIME(6)     NULL
) ENGINE = InnoDB;

-- Messages that arrived ahead of a gap, signature already checked; applied as soon as the
-- gap fills.
CREATE TABLE held_events (
    store       VARCHAR(64)           NOT NULL,
    origin      ENUM ('store', 'hub') NOT NULL,
    seq         BIGINT UNSIGNED       NOT NULL,
    id          CHAR(36)              NOT NULL,
    payload     BLOB                  NOT NULL,
    received_at DATETIME(6)           NOT NULL,
    PRIMARY KEY (store, origin, seq)
) ENGINE = InnoDB;

CREATE TABLE daily_sales (
    store VARCHAR(64) NOT NULL,
    sku   VARCHAR(64) NOT NULL,
    day   DATE        NOT NULL,
    qty   BIGINT      NOT NULL,
    PRIMARY KEY (store, sku, day)
) ENGINE = InnoDB;

-- One bad event never blocks a queue: it waits here, visible and alerted.
CREATE TABLE parked_events (
    id           BIGINT AUTO_INCREMENT PRIMARY KEY,
    store        VARCHAR(64)  NULL,
    seq          BIGINT UNSIGNED NULL,
    event_id     CHAR(36)     NULL,
    reason       VARCHAR(32)  NOT NULL,
    detail       VARCHAR(1000) NOT NULL,
    payload      MEDIUMBLOB   NOT NULL,
    topic        VARCHAR(255) NOT NULL,
    kafka_partition INT       NOT NULL,
    kafka_offset BIGINT       NOT NULL,
    parked_at    DATETIME(6)  NOT NULL,
    resolved_at  DATETIME(6)  NULL,
    UNIQUE KEY parked_position (topic, kafka_partition, kafka_offset),
    KEY parked_store (store, parked_at)
) ENGINE = InnoDB;

CREATE TABLE thresholds (
    store         VARCHAR(64) NOT NULL DEFAULT '',
    sku           VARCHAR(64) NOT NULL DEFAULT '',
    reorder_point BIGINT      NULL,
    max_stock     BIGINT      NULL,
    updated_at    DATETIME(6) NOT NULL,
    PRIMARY KEY (store, sku)
) ENGINE = InnoDB;

CREATE TABLE alerts (
    id              BIGINT AUTO_INCREMENT PRIMARY KEY,
    store           VARCHAR(64)  NULL,
    sku             VARCHAR(64)  NULL,
    kind            VARCHAR(32)  NOT NULL,
    severity        VARCHAR(16)  NOT NULL,
    message         VARCHAR(1000) NOT NULL,
    raised_at       DATETIME(6)  NOT NULL,
    acknowledged_at DATETIME(6)  NULL,
    acknowledged_by VARCHAR(100) NULL,
    resolved_at     DATETIME(6)  NULL,
    open_key        VARCHAR(200) AS (IF(resolved_at IS NULL, CONCAT_WS('/', kind, IFNULL(store, ''), IFNULL(sku, '')), NULL)) PERSISTENT,
    UNIQUE KEY alerts_one_open (open_key)
) ENGINE = InnoDB;

CREATE TABLE forecasts (
    store       VARCHAR(64) NOT NULL,
    sku         VARCHAR(64) NOT NULL,
    model       VARCHAR(32) NOT NULL,
    computed_at DATETIME(6) NOT NULL,
    horizon     INT         NOT NULL,
    body        JSON        NOT NULL,
    PRIMARY KEY (store, sku)
) ENGINE = InnoDB;

CREATE TABLE reorder_suggestions (
    store         VARCHAR(64) NOT NULL,
    sku           VARCHAR(64) NOT NULL,
    reorder_point BIGINT      NOT NULL,
    order_up_to   BIGINT      NOT NULL,
    suggested_qty BIGINT      NOT NULL,
    computed_at   DATETIME(6) NOT NULL,
    PRIMARY KEY (store, sku)
) ENGINE = InnoDB;

CREATE TABLE audit_log (
    id          BIGINT AUTO_INCREMENT PRIMARY KEY,
    actor       VARCHAR(100)  NOT NULL,
    action      VARCHAR(100)  NOT NULL,
    target      VARCHAR(200)  NULL,
    before_json JSON          NULL,
    after_json  JSON          NULL,
    at          DATETIME(6)   NOT NULL,
    from_addr   VARCHAR(64)   NULL,
    KEY audit_at (at)
) ENGINE = InnoDB;
