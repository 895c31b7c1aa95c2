"""The nemesis bench (issue 10): real nodes in their own network namespaces, a seeded schedule of faults, and
`ringkv check` judging the history.

- `netns`: namespaces, a bridge and veth pairs (every address checked with `ip route get` before any traffic),
  torn down whatever happens.
- `cluster`: one `ringkv node` process per namespace; kill -9 / restart on the same data, SIGSTOP / SIGCONT.
- `nemesis`: the seeded schedule (partitions, isolation, kill -9, pauses), its execution, its JSON, `replay`.
- `harness`: one run — cluster up, checker and nemesis together, the report and the availability figures.
- `test_faults`: the CI bench (5 nodes, a fixed seed and a random one). `bench/faults.py`: the longer soak.
"""
