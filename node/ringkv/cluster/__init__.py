"""Pure cluster policies: version vectors, ring placement, membership, quorum, Merkle trees.

Contract: no I/O here. No sockets, no files, no asyncio, no clocks read directly: time and randomness are
passed in by the caller, so every policy is deterministic and testable in isolation.
"""
