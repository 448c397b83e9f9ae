-- Issue 11: enrolment codes. `bazaar-hub store add ID --enrolment` (or
-- `POST /v1/stores/{store}/enrolment`) issues a one-time code with an expiry; the agent's
-- `bazaar-agent enroll` exchanges it once (`POST /v1/enrol`) for the store's token and
-- signing key. Only the code's SHA-256 is kept (codes carry 100 random bits, so a plain
-- hash needs no salt, as for store tokens).
CREATE TABLE enrolment_codes (
    code_hash  CHAR(64)    NOT NULL PRIMARY KEY,
    store      VARCHAR(64) NOT NULL,
    issued_at  DATETIME(6) NOT NULL,
    issued_by  VARCHAR(64) NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    used_at    DATETIME(6) NULL,
    used_from  VARCHAR(64) NULL,
    KEY enrolment_codes_store (store, issued_at)
) ENGINE = InnoDB CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_as_cs;
