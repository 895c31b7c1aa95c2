"""The node's HTTP API (aiohttp): routes, request validation, errors mapped to HTTP, metrics, OpenAPI.

`app.create_app(config)` builds the application; `errors` is the one place that maps `RingkvError`s to HTTP
statuses; `validation` turns request bodies into typed requests (pure, no aiohttp).
"""
