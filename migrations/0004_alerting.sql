-- Alerting: current alert state, incident history, silences and the notification outbox.

-- One row per alert fingerprint (rule + labels). State machine:
-- pending (condition true, waiting for `for`) → firing → resolved.
CREATE TABLE alerts (
    fingerprint     TEXT PRIMARY KEY,
    rule            TEXT NOT NULL,
    severity        TEXT NOT NULL,
    labels          JSONB NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    value           DOUBLE PRECISION,
    summary         TEXT NOT NULL DEFAULT '',
    description     TEXT NOT NULL DEFAULT '',
    started_at      TIMESTAMPTZ NOT NULL,
    fired_at        TIMESTAMPTZ,
    resolved_at     TIMESTAMPTZ,
    -- Last time the condition held / the fault recurred.
    last_active_at  TIMESTAMPTZ NOT NULL,
    occurrences     INT NOT NULL DEFAULT 1,
    -- Flapping: firing → resolved transitions in the last hour.
    flaps           INT NOT NULL DEFAULT 0,
    acknowledged_by TEXT,
    acknowledged_at TIMESTAMPTZ,
    last_notified_at TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX alerts_state ON alerts (state);

-- Every firing period, kept after the alert resolves.
CREATE TABLE incidents (
    id          BIGSERIAL PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    rule        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    labels      JSONB NOT NULL,
    summary     TEXT NOT NULL DEFAULT '',
    started_at  TIMESTAMPTZ NOT NULL,
    resolved_at TIMESTAMPTZ
);
CREATE INDEX incidents_open ON incidents (fingerprint) WHERE resolved_at IS NULL;
CREATE INDEX incidents_started ON incidents (started_at DESC);

-- Silences mute notifications of matching alerts between starts_at and ends_at.
-- matchers: {"host": "gpu-17", "rule": "gpu-xid"} (all must equal).
CREATE TABLE silences (
    id         BIGSERIAL PRIMARY KEY,
    matchers   JSONB NOT NULL,
    starts_at  TIMESTAMPTZ NOT NULL,
    ends_at    TIMESTAMPTZ NOT NULL,
    author     TEXT NOT NULL,
    comment    TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);

-- Notifications are written here in the same transaction as the state change, and a
-- sender delivers them: a crash or an SMTP outage delays a mail but never loses it.
CREATE TABLE notification_outbox (
    id              BIGSERIAL PRIMARY KEY,
    group_key       TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('firing', 'resolved')),
    recipients      TEXT[] NOT NULL,
    alert           JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at         TIMESTAMPTZ,
    message_id      TEXT,
    last_error      TEXT
);
CREATE INDEX outbox_unsent ON notification_outbox (next_attempt_at) WHERE sent_at IS NULL;

-- Hardware events are evaluated once: the evaluator's watermark is job_state
-- 'alert_events' (received_at of the last event seen).
CREATE INDEX hardware_events_received ON hardware_events (received_at);
