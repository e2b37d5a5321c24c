
-- Full-text search over what messages say: English stemming, the first 100,000 characters
-- (a tsvector has a size limit), never a sealed message (its content is a digest).
ALTER TABLE "s".conversation_messages ADD COLUMN IF NOT EXISTS search tsvector
    GENERATED ALWAYS AS (CASE WHEN sealed IS NULL THEN to_tsvector('english', left(content, 100000)) END) STORED;
CREATE INDEX IF NOT EXISTS idx_messages_search ON "s".conversation_messages USING gin (search);

-- A tenant's sessions by recency (listing every user's, as a browser does).
CREATE INDEX IF NOT EXISTS idx_sessions_recent ON "s".agent_sessions (tenant_id, updated_at DESC, id DESC);

-- State kept beside conversations, per agent (an app's, user_id '') or per agent and user:
-- what frameworks call app and user state (Google ADK's 'app:' and 'user:' keys).
CREATE TABLE IF NOT EXISTS "s".convostore_state (
    tenant_id varchar(255) NOT NULL,
    agent_name varchar(255) NOT NULL CHECK (agent_name <> ''),
    user_id varchar(255) NOT NULL DEFAULT '',
    state jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(state) = 'object'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, agent_name, user_id)
);
ALTER TABLE "s".convostore_state ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS convostore_scope ON "s".convostore_state;
CREATE POLICY convostore_scope ON "s".convostore_state
    USING (tenant_id = current_setting('convostore.tenant_id', true)
           AND (current_setting('convostore.user_id', true) = '*' OR user_id = ''
                OR user_id = current_setting('convostore.user_id', true)));

-- API keys of `convostore serve`: the secret is never stored, only its SHA-256 (the secret
-- is 256 random bits). A key acts in one tenant, for one user or every user of it, or (no
-- tenant) as an operator across tenants.
CREATE TABLE IF NOT EXISTS "s".convostore_api_keys (
    id varchar(32) PRIMARY KEY,
    secret_hash bytea NOT NULL,
    name text NOT NULL DEFAULT '',
    tenant_id varchar(255),
    user_id varchar(255),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT convostore_api_keys_scope_check CHECK (user_id IS NULL OR tenant_id IS NOT NULL)
);
