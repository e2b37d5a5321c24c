-- Takes the lock Citus's executor takes on a shard's metadata before writing the shard
-- (share: writers do not block each other; a shard move or split takes it exclusively) on
-- each of the shards, and tells whether this node holds them all, for
-- convostore_append_sharded's writes to the shards' own tables. Citus lets only the
-- tables' owner take that lock, so the function runs as its owner; the ids are sorted, as
-- Citus requires.
--
-- It answers false, and the append takes the distributed path (right under any isolation,
-- on any version), where the shortcut would not be sound or is not known to be:
-- * a transaction other than READ COMMITTED: the placements are read after the lock is
--   granted, and only under READ COMMITTED does that read see a move that finished while it
--   waited (in an older snapshot it would write the shard being moved away);
-- * a Citus version the shortcut is not tested on: it depends on Citus internals
--   (lock_shard_metadata, shard table naming, the placement catalogs). The tested versions
--   are the extension versions in the setting convostore.citus_shard_writes (default below);
-- * the lock not granted within lock_timeout (a shard move holds it): the distributed path
--   waits for it under the call's statement timeout instead.
-- It refuses shards of any table but this schema's sessions: as the owner it could
-- otherwise lock any distributed table's shards for its caller.
CREATE OR REPLACE FUNCTION {s}.convostore_hold_shards(p_shards bigint[]) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '1s' AS $fn$
DECLARE
    v_shards bigint[] := ARRAY(SELECT DISTINCT x FROM unnest(p_shards) AS x WHERE x IS NOT NULL ORDER BY 1);
    v_tested text[] := string_to_array(coalesce(current_setting('convostore.citus_shard_writes', true), '13.2-1'), ',');
BEGIN
    IF cardinality(v_shards) = 0 THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(v_shards) AS x
                WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_shard d
                                   WHERE d.shardid = x AND d.logicalrelid = '{s}.agent_sessions'::regclass)) THEN
        RAISE EXCEPTION 'convostore_hold_shards: only shards of %.agent_sessions', '{s}'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed'
       OR NOT ((SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'citus') = ANY (v_tested)) THEN
        RETURN false;
    END IF;
    BEGIN
        PERFORM pg_catalog.lock_shard_metadata(5, v_shards);
    EXCEPTION WHEN lock_not_available THEN
        RETURN false;
    END;
    RETURN (SELECT count(*) FROM pg_catalog.pg_dist_placement p
             WHERE p.shardid = ANY (v_shards)
               AND p.groupid = (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g)) = cardinality(v_shards);
END
$fn$;
