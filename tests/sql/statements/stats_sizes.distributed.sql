
SELECT c.relname AS name,
       CASE WHEN d.logicalrelid IS NULL THEN pg_table_size(c.oid) ELSE citus_table_size(c.oid) END AS table_bytes,
       CASE WHEN d.logicalrelid IS NULL THEN pg_indexes_size(c.oid)
            ELSE citus_total_relation_size(c.oid) - citus_table_size(c.oid) END AS index_bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_dist_partition d ON d.logicalrelid = c.oid
WHERE n.nspname = $1 AND c.relkind = 'r'
ORDER BY c.relname
