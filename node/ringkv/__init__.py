"""ringkv: a Dynamo-style distributed key-value store.

Layers (arrows point one way, enforced by import-linter in `.importlinter`):

    api -> net -> cluster, storage

- `ringkv.storage`: the per-node LSM engine; bytes in, bytes out; synchronous core, no asyncio
  except the thin `storage.aio` shell.
- `ringkv.cluster`: pure policies (version vectors, ring, membership, quorum, Merkle): no I/O,
  time and randomness are passed in.
"""

__version__ = "0.1.0"
