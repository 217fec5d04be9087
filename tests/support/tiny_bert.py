"""A random-weight BERT encoder of 768 dimensions, laid out as a sentence-transformers model.

It stands in for a 768-dimension embedding model such as BAAI/bge-base-en-v1.5 (what
LeapfrogAI's RAG stores), at a size that loads in seconds: one layer, a small vocabulary, but
the real width (12 heads x 64: vLLM's CPU attention refuses small heads) and the files vLLM
reads for pooling models: modules.json with a CLS Pooling and a Normalize module, and
sentence_bert_config.json, whose max_seq_length vLLM takes as max_model_len (256 here, as for
all-MiniLM-L6-v2, so an input over 256 tokens is over the limit in both). Its vectors mean
nothing; tests use it for shapes, order, limits and truncation.

The tokenizer is a WordPiece one trained in milliseconds with the `tokenizers` library, with
BERT's [CLS] ... [SEP] around every input.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

HIDDEN_SIZE = 768
MAX_SEQ_LENGTH = 256
CLS, SEP, PAD, UNK, MASK = "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"
_CORPUS = [
    "Paris is the capital of France. Rome is the capital of Italy.",
    "Retrieval augmented generation indexes documents as embedding vectors.",
    "My cat sleeps on the warm windowsill all afternoon.",
    "Zarf packages software for air-gapped Kubernetes clusters.",
] * 25


@functools.cache
def bert_tokenizer() -> PreTrainedTokenizerFast:
    """The WordPiece tokenizer of the tiny BERT (cached: training is deterministic anyway)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=[PAD, UNK, CLS, SEP, MASK])
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        cls_token=CLS,
        sep_token=SEP,
        pad_token=PAD,
        unk_token=UNK,
        mask_token=MASK,
        # BERT's own position limit, longer than sentence-transformers' max_seq_length below,
        # as in all-MiniLM-L6-v2: the backend must cut at the model's limit, not the tokenizer's.
        model_max_length=512,
    )


def build_tiny_bert(dest: Path, *, seed: int = 0) -> Path:
    """Writes config, safetensors weights, tokenizer and sentence-transformers files to `dest`."""
    import torch
    from transformers import BertConfig, BertModel

    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = bert_tokenizer()
    tokenizer.save_pretrained(dest)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=256,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    # With BERT's pooler layer, as the published checkpoints (all-MiniLM-L6-v2, bge) have it;
    # vLLM's embedding runner pools itself and skips it.
    BertModel(config).save_pretrained(dest, safe_serialization=True)
    # vLLM reads the pooling (and whether to normalize) from these, as for bge's own files.
    modules = [
        ("", "sentence_transformers.models.Transformer"),
        ("1_Pooling", "sentence_transformers.models.Pooling"),
        ("2_Normalize", "sentence_transformers.models.Normalize"),
    ]
    (dest / "modules.json").write_text(
        json.dumps(
            [
                {"idx": i, "name": str(i), "path": path, "type": kind}
                for i, (path, kind) in enumerate(modules)
            ]
        )
    )
    (dest / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": HIDDEN_SIZE, "pooling_mode_cls_token": True}
    (dest / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (dest / "2_Normalize").mkdir(exist_ok=True)
    sbert = {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False}
    (dest / "sentence_bert_config.json").write_text(json.dumps(sbert))
    return dest
