-- Intelligence inside the hub (DESIGN §8): thresholds with their author, alerts and the
-- outbox that publishes them on `{prefix}alerts`, forecast runs, and the figures the
-- forecast job writes (forecasts, reorder suggestions, forecast-derived thresholds).

-- `thresholds` keys its three scopes with '' for "any": ('', sku) is chain-wide for a
-- product, (store, '') every sku of a store, (store, sku) one pair. NULL in a field means
-- "not set at this level" (the next level down applies; see hub/src/thresholds.rs).
ALTER TABLE thresholds
    ADD COLUMN updated_by VARCHAR(100) NULL,
    ADD KEY thresholds_sku (sku);

ALTER TABLE alerts
    ADD COLUMN detail JSON NULL,
    ADD KEY alerts_store_id (store, id),
    ADD KEY alerts_kind_id (kind, id);

-- Raised and resolved alerts, written in the transaction that raises or resolves them and
-- published on `{prefix}alerts` by one relay (a Redis lease) in id order, then stamped.
CREATE TABLE alert_events (
    id           BIGINT AUTO_INCREMENT PRIMARY KEY,
    alert_id     BIGINT       NOT NULL,
    store        VARCHAR(64)  NULL,
    event        VARCHAR(16)  NOT NULL,
    body         JSON         NOT NULL,
    created_at   DATETIME(6)  NOT NULL,
    published_at DATETIME(6)  NULL,
    KEY alert_events_pending (published_at, id)
) ENGINE = InnoDB;

-- One row per forecast job run: its progress, for `GET /v1/forecasts/runs/{id}`.
CREATE TABLE forecast_runs (
    id            CHAR(36)      NOT NULL PRIMARY KEY,
    status        VARCHAR(16)   NOT NULL,
    trigger_kind  VARCHAR(16)   NOT NULL,
    requested_by  VARCHAR(100)  NULL,
    instance      VARCHAR(100)  NOT NULL,
    started_at    DATETIME(6)   NOT NULL,
    finished_at   DATETIME(6)   NULL,
    history_from  DATE          NOT NULL,
    history_to    DATE          NOT NULL,
    series_total  BIGINT        NOT NULL DEFAULT 0,
    series_done   BIGINT        NOT NULL DEFAULT 0,
    error         VARCHAR(1000) NULL,
    KEY forecast_runs_started (started_at),
    KEY forecast_runs_status (status)
) ENGINE = InnoDB;

-- `body` holds the history tail, daily means, intervals and sds; the columns are what
-- queries filter or join on.
ALTER TABLE forecasts
    ADD COLUMN first_day     DATE        NULL,
    ADD COLUMN rmsse         DOUBLE      NULL,
    ADD COLUMN backtest_days INT         NULL,
    ADD COLUMN run_id        CHAR(36)    NULL,
    ADD KEY forecasts_sku (sku);

-- The job's figures per (store, sku). `derived_reorder_point` / `derived_max_stock` are the
-- forecast-derived thresholds: the lowest level of precedence, in force only with
-- BAZAAR_HUB_PUSH_THRESHOLDS=true.
ALTER TABLE reorder_suggestions
    ADD COLUMN on_hand               BIGINT   NOT NULL DEFAULT 0,
    ADD COLUMN demand_over_lead_time DOUBLE   NOT NULL DEFAULT 0,
    ADD COLUMN safety_stock          DOUBLE   NOT NULL DEFAULT 0,
    ADD COLUMN lead_time_days        INT      NOT NULL DEFAULT 7,
    ADD COLUMN pack_size             INT      NOT NULL DEFAULT 1,
    ADD COLUMN derived_reorder_point BIGINT   NULL,
    ADD COLUMN derived_max_stock     BIGINT   NULL,
    ADD COLUMN run_id                CHAR(36) NULL,
    ADD KEY reorder_suggestions_sku (sku);

-- The version of each store's effective-thresholds document: the hub_seq of the bulk-state
-- notice that announced its last change (so an agent holding a notice knows a document at
-- or past that version is current). 0 until the first change.
CREATE TABLE threshold_versions (
    store      VARCHAR(64)     NOT NULL PRIMARY KEY,
    version    BIGINT UNSIGNED NOT NULL,
    changed_at DATETIME(6)     NOT NULL
) ENGINE = InnoDB;
