"""The in-pod runtime: the LeapfrogAI gRPC contract served by vLLM's async engine.

`server` (process lifecycle), `services/` (one module per proto package), `engine` (everything
that touches vLLM), `generation`, `sampling`, `prompts`, `calls` (admission, status codes,
metrics and logs per call), `config` (the one typed settings object), `commands/` (CLI).
Nothing here imports `zarf_vllm.packaging`.
"""
