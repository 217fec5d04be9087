"""zarf-vllm: LLM inference for disconnected Kubernetes clusters, as a Zarf package.

Two programs share this distribution and nothing but the model contract:

- `zarf_vllm.backend`: the in-pod runtime, a LeapfrogAI-compatible gRPC server on vLLM
  (`python -m zarf_vllm.backend serve`).
- `zarf_vllm.packaging`: the connected-side tool `zarf package create` runs: pull and verify
  weights, render the chart values of every profile, build the model image
  (`python -m zarf_vllm.packaging pull|verify|lock|image|values|preview`).
- `zarf_vllm.model`: what both read: the model manifest, weight verification, and the sizing
  formulas (create time renders the fit; start-up re-checks it).
"""

__version__ = "0.1.0"
