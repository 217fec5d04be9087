"""The OpenAI-compatible HTTP API, served beside the gRPC contract from the same engine.

vLLM's own OpenAI serving layer answers the requests (`serving.py` builds it on our AsyncLLM);
this package adds only what the backend shares across its APIs: admission, health, drain,
auth, metrics and logs (`guard.py`), the errors' wire form (`errors.py`), the per-call token
counts (`observe.py`), and the HTTP transport in the backend's own event loop (`transport.py`).
`frontend.py` ties them together for `server.py`.
"""
