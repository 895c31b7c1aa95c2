"""The load generator behind `ringkv bench` and `bench/compare.py`.

Pure (no I/O, randomness passed in): `histogram` (log-bucketed latency histogram, 0.1% precision, mergeable),
`keyspace` (keys, values, uniform and zipfian samplers), `plan` (what a run does, split over workers), `stats`
(per-operation results and their merging), `report` (text and JSON).
Edges: `adapters` (the only modules that talk to a store: ringkv over HTTP, etcd's v3 JSON gateway, Redis),
`runner` (the closed-loop load on one event loop), `driver` (preload, worker processes, progress), `progress`
(the stderr line), `cli` (the `bench` subcommand's parser and entry point).

Every target goes through the same keys, values, concurrency and timing code; only the adapter differs. The
package depends on no part of the node: it talks to ringkv over its public HTTP API like any client.
"""
