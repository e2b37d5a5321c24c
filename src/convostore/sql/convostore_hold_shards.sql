-- Takes the lock Citus's executor takes on a shard's metadata before writing the shard
-- (share: writers do not block each other; a shard move or split takes it exclusively) on
-- each of the shards, and tells whether this node holds them all, for
-- convostore_append_sharded's writes to the shards' own tables. Citus lets only the
-- tables' owner take that lock, so the function runs as its owner; the ids are sorted, as
-- Citus requires.
CREATE OR REPLACE FUNCTION {s}.convostore_hold_shards(p_shards bigint[]) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_shards bigint[] := ARRAY(SELECT DISTINCT x FROM unnest(p_shards) AS x WHERE x IS NOT NULL ORDER BY 1);
BEGIN
    IF cardinality(v_shards) = 0 THEN
        RETURN false;
    END IF;
    PERFORM pg_catalog.lock_shard_metadata(5, v_shards);
    RETURN (SELECT count(*) FROM pg_catalog.pg_dist_placement p
             WHERE p.shardid = ANY (v_shards)
               AND p.groupid = (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g)) = cardinality(v_shards);
END
$fn$;
