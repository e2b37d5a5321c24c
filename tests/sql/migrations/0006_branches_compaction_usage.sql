
-- Branches share their parent's rows up to the fork: a message belongs to one branch of its
-- session and seq stays the session's one counter. A compaction summary records the range
-- of seqs it stands for, which stay stored (hidden from the compacted view). tokens: the
-- message's token count, kept for budget windows (in clear, like the role, when sealed).
ALTER TABLE "s".conversation_messages ADD COLUMN IF NOT EXISTS branch varchar(255) NOT NULL DEFAULT 'main';
ALTER TABLE "s".conversation_messages ADD COLUMN IF NOT EXISTS tokens integer;
-- The item's type (a framework's: 'reasoning', 'function_call', ...), kept in clear so that
-- a window never starts between a reasoning item and the item it precedes.
ALTER TABLE "s".conversation_messages ADD COLUMN IF NOT EXISTS kind varchar(64);
ALTER TABLE "s".conversation_messages ADD COLUMN IF NOT EXISTS covers_from bigint;
ALTER TABLE "s".conversation_messages ADD COLUMN IF NOT EXISTS covers_to bigint;
ALTER TABLE "s".conversation_messages DROP CONSTRAINT IF EXISTS conversation_messages_covers_check;
ALTER TABLE "s".conversation_messages ADD CONSTRAINT conversation_messages_covers_check
    CHECK ((covers_from IS NULL) = (covers_to IS NULL) AND covers_from <= covers_to AND covers_to <= seq
           AND tokens >= 0);
-- Set once a session is forked or compacted: reads of the others keep their plain path.
ALTER TABLE "s".agent_sessions ADD COLUMN IF NOT EXISTS forked boolean NOT NULL DEFAULT false;
ALTER TABLE "s".agent_sessions ADD COLUMN IF NOT EXISTS compacted boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS idx_messages_covers
    ON "s".conversation_messages (session_id, tenant_id, seq) WHERE covers_from IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_messages_pinned
    ON "s".conversation_messages (session_id, tenant_id, seq) WHERE role IN ('system', 'developer');

-- A session's branches other than 'main' (which has a row only once cleared or deleted). A
-- deleted branch keeps its row, and the rows its live descendants share, until none needs them.
CREATE TABLE IF NOT EXISTS "s".conversation_branches (
    session_id varchar(255) NOT NULL,
    tenant_id varchar(255) NOT NULL,
    name varchar(255) NOT NULL CHECK (name <> ''),
    user_id varchar(255) NOT NULL,
    parent varchar(255),
    fork_seq bigint CHECK (fork_seq >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    cleared_to bigint,
    PRIMARY KEY (session_id, tenant_id, name),
    CONSTRAINT conversation_branches_session_fkey FOREIGN KEY (session_id, tenant_id)
        REFERENCES "s".agent_sessions (id, tenant_id) ON DELETE CASCADE,
    CONSTRAINT conversation_branches_parent_check
        CHECK ((parent IS NULL) = (name = 'main') AND (parent IS NULL) = (fork_seq IS NULL))
);

-- Per-turn usage of the model, with the session's owner and agent for totals.
CREATE TABLE IF NOT EXISTS "s".conversation_usage (
    session_id varchar(255) NOT NULL,
    tenant_id varchar(255) NOT NULL,
    id varchar(255) NOT NULL CHECK (id <> ''),
    user_id varchar(255) NOT NULL,
    agent_name varchar(255) NOT NULL,
    branch varchar(255) NOT NULL DEFAULT 'main',
    model varchar(255),
    requests integer NOT NULL DEFAULT 0 CHECK (requests >= 0),
    input_tokens bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    reasoning_tokens bigint NOT NULL DEFAULT 0 CHECK (reasoning_tokens >= 0),
    cached_tokens bigint NOT NULL DEFAULT 0 CHECK (cached_tokens >= 0),
    duration_seconds double precision CHECK (duration_seconds >= 0 AND duration_seconds < 1e9),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, tenant_id, id),
    CONSTRAINT conversation_usage_session_fkey FOREIGN KEY (session_id, tenant_id)
        REFERENCES "s".agent_sessions (id, tenant_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS idx_usage_user ON "s".conversation_usage (tenant_id, user_id, created_at);
CREATE INDEX IF NOT EXISTS idx_usage_created_at ON "s".conversation_usage USING brin (created_at);

ALTER TABLE "s".conversation_branches ENABLE ROW LEVEL SECURITY;
ALTER TABLE "s".conversation_usage ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS convostore_scope ON "s".conversation_branches;
CREATE POLICY convostore_scope ON "s".conversation_branches
    USING (tenant_id = current_setting('convostore.tenant_id', true)
           AND (current_setting('convostore.user_id', true) = '*'
                OR user_id = current_setting('convostore.user_id', true)));
DROP POLICY IF EXISTS convostore_scope ON "s".conversation_usage;
CREATE POLICY convostore_scope ON "s".conversation_usage
    USING (tenant_id = current_setting('convostore.tenant_id', true)
           AND (current_setting('convostore.user_id', true) = '*'
                OR user_id = current_setting('convostore.user_id', true)));

-- The functions take branches, windows and token counts now (earlier signatures dropped).
DROP FUNCTION IF EXISTS "s".convostore_append(text, text, text, boolean, boolean, int[], text[], text[], text[],
    text[], text[], text[], text[], text[], text[], text[], bytea[]);
DROP FUNCTION IF EXISTS "s".convostore_read(text, text, text, bigint, bigint);
-- (And created convostore_append, convostore_read and convostore_compact, which the function
-- registry installs since.)
