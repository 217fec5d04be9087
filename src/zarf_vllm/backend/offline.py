"""No network at run time: the environment that keeps every library from reaching out.

Hugging Face libraries and vLLM read these variables when they are first imported, so
`force_offline()` must run before anything imports vllm, transformers or huggingface_hub.
"""

from __future__ import annotations

import os

OFFLINE_ENVIRONMENT = {
    # Never resolve a model name against the Hub: weights come from a local directory only.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # vLLM's usage statistics reporting.
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
}


def force_offline() -> None:
    """Sets the offline variables, overriding any value the environment had."""
    os.environ.update(OFFLINE_ENVIRONMENT)
