"""`ringkv check`: a bounded Jepsen-style workload against any cluster's URLs, and the checker of its history.

- `history` (pure): what a run records — one `Op` per request, with its outcome.
- `analysis` (pure): the verdicts — lost, indeterminate and phantom elements of the *set* workload,
  lost registers, availability per second and latency percentiles, sibling counts.
- `workload` (async): the set and register workloads over HTTP, the settle phase, the final reads.
- `replicas` (async): after settling, which keys' replicas still disagree (per-node `/admin/v1/local`).
- `report`: the final table and the `--json` document; `cli`: the command line and its progress line.

Nothing here imports the node's internals: it talks to nodes over their public and admin HTTP API, like any
client, so it can be pointed at any ringkv cluster.
"""
