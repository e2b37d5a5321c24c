
-- Fitted the functions of a schema distributed before it to Citus (sql/fit_to_citus.sql),
-- which runs since whenever the function registry installs a function, and after
-- distributing.
