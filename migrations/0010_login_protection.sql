-- Login protection shared by every server replica.
--
-- Failed password checks per user name and per (user name, client address), with the
-- time before which the next attempt is refused. Rows expire with their window.
CREATE TABLE login_throttle (
    key           TEXT PRIMARY KEY,
    failures      INT NOT NULL DEFAULT 0,
    blocked_until TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Secrets the servers share, made once: the key of the device cookies that let a
-- browser which has logged in before skip the per-user throttle.
CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Sessions end after `server.session_idle_secs` without use.
ALTER TABLE sessions ADD COLUMN last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now();
