-- A mail goes to each recipient in its own SMTP envelope, and the outbox remembers who
-- has it: one address the mail server refuses (550 no such user) no longer holds the
-- mail back from the rest of the route, and a retry goes only to those still waiting.
--   delivered_to: recipients whose server accepted the mail;
--   refused:      recipients whose server refused it for good (a 5xx reply), each with
--                 the reply: {"nobody@example.com": "permanent error (550): 5.1.1 …"}.
-- A row is sent once every recipient is in one of them.
ALTER TABLE notification_outbox
    ADD COLUMN delivered_to TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN refused      JSONB  NOT NULL DEFAULT '{}';
