-- Prometheus remote-write tokens (POST /api/v1/write). A token is scoped either to a
-- site (every host it writes belongs to that site; a host placed in another site is
-- refused) or to a list of host names. Agent and pool tokens leave both NULL.
ALTER TABLE agent_tokens ADD COLUMN write_site TEXT;
ALTER TABLE agent_tokens ADD COLUMN write_hosts TEXT[];
ALTER TABLE agent_tokens ADD CONSTRAINT agent_tokens_one_write_scope
    CHECK (write_site IS NULL OR write_hosts IS NULL);
