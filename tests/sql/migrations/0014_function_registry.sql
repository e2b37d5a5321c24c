
-- The function registry: each function convostore installed in the schema, with the SHA-256
-- of the text it ran (CREATE OR REPLACE FUNCTION, the schema substituted). After migrating,
-- every function whose text differs from the one recorded is installed again.
CREATE TABLE IF NOT EXISTS "s".convostore_functions (
    name text PRIMARY KEY,
    hash text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);
-- Roles that read the ledger (a runtime role set up before this migration) read the registry
-- too: a store checks both before its first call.
DO $$
DECLARE
    reader text;
BEGIN
    FOR reader IN
        SELECT DISTINCT a.grantee::regrole::text
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = '"s".convostore_migrations'::regclass AND a.privilege_type = 'SELECT'
          AND a.grantee <> c.relowner AND a.grantee <> 0
    LOOP
        EXECUTE format('GRANT SELECT ON "s".convostore_functions TO %s', reader);
    END LOOP;
END
$$;
