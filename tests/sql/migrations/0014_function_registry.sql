
-- The function registry: each function convostore installed in the schema, with the SHA-256
-- of the text it ran (CREATE OR REPLACE FUNCTION, the schema substituted). After migrating,
-- every function whose text differs from the one recorded is installed again.
CREATE TABLE IF NOT EXISTS "s".convostore_functions (
    name text PRIMARY KEY,
    hash text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);
