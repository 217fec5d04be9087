"""A few-MB random-weight Llama with a real byte-level BPE tokenizer and a chat template.

It loads in seconds on vLLM's CPU engine, so most server tests use it. Its text is nonsense;
tests that need sensible answers use the SmolLM2 demo model instead. Byte-level BPE means a
multi-byte character can span several tokens, which exercises the streaming text rules.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Streaming tokens one by one over gRPC to a client that may cancel at any time.",
    "Zürich, Kraków, 東京, Αθήνα and São Paulo are cities; emoji 🚀✨ take four bytes each.",
    "def main():\n    return 42\n",
] * 50


def build_tiny_llama(dest: Path, *, max_positions: int = 1024, seed: int = 0) -> Path:
    """Writes config, safetensors weights and tokenizer files into `dest` and returns it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<|end|>", "<|user|>", "<|system|>", "<|assistant|>", "<|function|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dest)

    # head_dim 64: vLLM's CPU attention refuses smaller heads.
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=max_positions,
        eos_token_id=tokenizer.token_to_id("<|end|>"),
        bos_token_id=None,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random weights make greedy decoding pick special tokens or byte tokens that are not whole
    # characters, and a stream of those has no text to show. Zeroing their (tied) embeddings
    # zeroes their logits, so greedy output is real text while sampling can still reach them.
    with torch.no_grad():
        for token_id in range(tokenizer.get_vocab_size()):
            text = tokenizer.decode([token_id])
            if "\ufffd" in text or token_id < len(special):
                model.model.embed_tokens.weight[token_id] = 0
    model.save_pretrained(dest, safe_serialization=True)
    # transformers may add generation defaults (e.g. sampling) that would surprise tests.
    (dest / "generation_config.json").write_text(json.dumps({"eos_token_id": config.eos_token_id}))
    return dest
