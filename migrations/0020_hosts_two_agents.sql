-- Two agent processes reporting as one host (a cloned machine or VM image, a second agent
-- left running after a reinstall) interleave their samples and count the host's energy
-- twice. Each agent process sends a random instance id with every batch; a host whose
-- batches go back to the instance it just left, within 5 minutes, has two agents.
ALTER TABLE hosts ADD COLUMN agent_prev_instance TEXT;
ALTER TABLE hosts ADD COLUMN agent_prev_heard TIMESTAMPTZ;
ALTER TABLE hosts ADD COLUMN two_agents_at TIMESTAMPTZ;
