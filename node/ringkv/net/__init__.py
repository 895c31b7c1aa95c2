"""The node's network side: internode transport, gossip, the request coordinator, hinted handoff.

Thin asyncio shells around the pure policies of `ringkv.cluster`; storage is reached through
`ringkv.replica`.
"""
