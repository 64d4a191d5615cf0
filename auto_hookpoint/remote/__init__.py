"""Split inference across machines: an edge half, a cloud half, and where to split.

- :mod:`~auto_hookpoint.remote.codec`: compressing the activation that crosses the network
- :mod:`~auto_hookpoint.remote.wire`: requests and responses as safetensors bytes
- :mod:`~auto_hookpoint.remote.executor`: what the server does with one request
- :mod:`~auto_hookpoint.remote.server`: the ASGI app (Starlette) and running it (uvicorn)
- :mod:`~auto_hookpoint.remote.client`: ``SplitClient``, the edge half
- :mod:`~auto_hookpoint.remote.profile`: measuring a model's cost per block
- :mod:`~auto_hookpoint.remote.planner`: latency of every split for a link, the best one
- :mod:`~auto_hookpoint.remote.loading`: loading a local HuggingFace model folder

The server stack (Starlette, uvicorn) and the HTTP client (httpx) are imported only by
the modules that need them.
"""
