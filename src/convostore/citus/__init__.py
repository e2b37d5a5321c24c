"""Citus: what convostore does differently on distributed tables (its Python side; the SQL is
in :mod:`convostore._sql`, distributing the tables in :func:`convostore.migrations.distribute`).

* :mod:`~convostore.citus._setup`: the settings each connection makes on a Citus node, and
  finding out whether the tables are distributed when a pool opens;
* :mod:`~convostore.citus._shards`: the shard map, and PostgreSQL's ``hashtext`` that places
  a session in it;
* :mod:`~convostore.citus._nodes`: reading the map, and a pool per node for the calls sent
  straight to the node holding their session.

Sending a session's appends and reads straight to the Citus node that holds it.

Citus places a session by the hash of its id (PostgreSQL's ``hashtext``, 32 bits): the shard
of ``agent_sessions`` whose hash range holds it, with the session's messages, branches and
usage co-located on the same node. The append and read functions are distributed by their
session argument, so a call that reaches that node runs there whole; through the coordinator
it costs a second hop and the coordinator's own work (1.2-1.4x the appends per second straight
to the nodes, measured on a 3-node cluster on loopback).

The map of hash ranges to nodes is read from the coordinator's metadata when a pool opens and
again every :data:`REFRESH` seconds, on any distributed tables: appends to sessions on one
node share a call (:mod:`convostore._coalesce`), routed or not. A call sent by a stale map (a
shard moved meanwhile) is still right: the node it reaches finds the shard is not there and
runs the function's statements through the distributed tables, or, for appends of several
sessions, reports them busy and they are sent again one session at a time. Only the append
and read functions are routed: every other statement may touch tables that stay on the
coordinator (the audit trail, the migration ledger).

Nothing is imported here: the modules are imported where they are used (the runner, the
pools), so that this package never makes a circle with them.
"""
