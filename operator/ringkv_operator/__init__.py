"""The ringkv Kubernetes operator (kopf). Arrives with the Kubernetes packaging issue.

Contract: the operator never imports the node's internals; it talks to nodes over their admin HTTP API.
"""
