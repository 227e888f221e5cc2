"""The tag model: the MiniLM encoder (mean pooling + L2 norm) with a multi-label linear head."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.encoder import l2_normalize, mean_pool, minilm_weights_dir


def load_tokenizer(path: Path | None = None) -> Any:
    """The MiniLM tokenizer (fast), from ``path`` or the bundled weights; never touches the hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or minilm_weights_dir()), local_files_only=True)


class TagModel(nn.Module):
    """Encoder -> normalised mean-pooled embedding -> one logit per tag (the fine-tuning objective).

    The head reads the normalised embedding, so the vector served as ``EMBEDDING`` is the one the
    tags were learned from, and zero-shot similarities live in the same space. The served tag
    scores come from :class:`~shared.tagmodel.head.TagHead`, fitted on these embeddings after.
    """

    def __init__(self, n_tags: int, weights_dir: Path | None = None, config_only: bool = False):
        super().__init__()
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoConfig, AutoModel

        src = str(weights_dir or minilm_weights_dir())
        if config_only:  # weights come from a checkpoint right after
            self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(src, local_files_only=True))
        else:
            self.encoder = AutoModel.from_pretrained(src, local_files_only=True)
        dim = int(self.encoder.config.hidden_size)
        self.head = nn.Linear(dim, n_tags)
        # Unit-norm inputs give tiny logits with a default init; scale lets them reach useful range fast.
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = l2_normalize(mean_pool(hidden, attention_mask))
        return self.head(emb) * self.scale, emb


class EmbeddingModel(nn.Module):
    """What is exported: the fine-tuned encoder's embedding (the tag head runs beside it, in numpy)."""

    def __init__(self, model: TagModel):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return l2_normalize(mean_pool(hidden, attention_mask))
