-- Inventory, users, sessions and agent tokens: small tables, read on every page.

CREATE TABLE hosts (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    site          TEXT NOT NULL DEFAULT '',
    rack          TEXT NOT NULL DEFAULT '',
    pool          TEXT NOT NULL DEFAULT '',
    labels        JSONB NOT NULL DEFAULT '{}',
    agent_version TEXT NOT NULL DEFAULT '',
    -- The agent's spool state as of its last batch (see AgentStats).
    agent_stats   JSONB NOT NULL DEFAULT '{}',
    first_seen    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen     TIMESTAMPTZ
);

-- GPUs by (host, index); the UUID follows the board if it moves.
CREATE TABLE gpus (
    host_id            BIGINT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    gpu_index          SMALLINT NOT NULL,
    uuid               TEXT,
    model              TEXT,
    memory_total_bytes BIGINT,
    power_limit_watts  DOUBLE PRECISION,
    driver_version     TEXT,
    first_seen         TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (host_id, gpu_index)
);

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    -- argon2id PHC string
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Login sessions; the cookie carries the secret, the table its SHA-256.
CREATE TABLE sessions (
    token_sha256 BYTEA PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- Agent tokens are scoped to one host name; only the SHA-256 of the token is kept
-- (tokens are 256-bit random, so a fast hash is enough).
CREATE TABLE agent_tokens (
    id           BIGSERIAL PRIMARY KEY,
    host_name    TEXT NOT NULL,
    token_sha256 BYTEA NOT NULL UNIQUE,
    -- Free text; `demo` marks the tokens the demo mints for itself on every start.
    note         TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX agent_tokens_host ON agent_tokens (host_name);
