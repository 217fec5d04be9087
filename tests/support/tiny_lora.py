"""A LoRA adapter for the tiny random Llama (tiny_model.py), made with `peft`, and a manifest
that pins the model and its adapters as `pull` would serve them.

peft starts LoRA's B matrices at zero (the adapter is then a no-op); the weights here are
random and large enough that the adapter changes the greedy output.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from zarf_vllm.model.hashing import sha256_file

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_tiny_lora(model_dir: Path, dest: Path, *, rank: int = 8, seed: int = 1) -> Path:
    """Writes adapter_config.json and adapter_model.safetensors into `dest`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=TARGET_MODULES, init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(dest)
    return dest


def greedy_reference(model_dir: Path, adapter_dir: Path | None, prompt: str, tokens: int) -> str:
    """transformers' greedy completion of `prompt`: the bare model, or with peft's adapter."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def _files(directory: Path) -> list[dict[str, object]]:
    return [
        {"path": str(p.relative_to(directory)), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    ]


def write_manifest(model_dir: Path, adapters: dict[str, Path], dest: Path, id: str) -> Path:
    """A locked manifest of the tiny model (local source) with `adapters` (name -> directory),
    written to dest/<id>.yaml; architecture facts from config.json and the weights."""
    from zarf_vllm.packaging.weights.architecture import safetensors_parameters

    config = json.loads((model_dir / "config.json").read_text())
    manifest = {
        "id": id,
        "display_name": "Tiny random Llama with LoRA adapters",
        "license": "Apache-2.0",
        "source": {"kind": "local", "path": str(model_dir)},
        "files": _files(model_dir),
        "architecture": {
            "model_type": config["model_type"],
            "parameters": safetensors_parameters(model_dir),
            "layers": config["num_hidden_layers"],
            "hidden_size": config["hidden_size"],
            "intermediate_size": config["intermediate_size"],
            "attention_heads": config["num_attention_heads"],
            "kv_heads": config["num_key_value_heads"],
            "head_dim": config["head_dim"],
            "vocab_size": config["vocab_size"],
            "max_position_embeddings": config["max_position_embeddings"],
            "weight_dtype": "float32",
            "tied_embeddings": config["tie_word_embeddings"],
        },
        "adapters": [
            {
                "name": name,
                "source": {"kind": "local", "path": str(directory)},
                "files": _files(directory),
                "rank": json.loads((directory / "adapter_config.json").read_text())["r"],
            }
            for name, directory in adapters.items()
        ],
    }
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{id}.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path
