-- Client addresses each user has logged in from (with the right password), for 30 days:
-- like a browser's device cookie, a known address is not slowed by the per-user back-off
-- that guesses from other addresses set off, so HTTP Basic clients (scripts, Prometheus)
-- are not locked out by someone guessing at their user.
CREATE TABLE login_known_addresses (
    user_name     TEXT NOT NULL,
    address       TEXT NOT NULL,
    last_login_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_name, address)
);
