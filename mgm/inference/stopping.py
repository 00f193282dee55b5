"""`KeywordsStoppingCriteria`: the original's keyword stop rule, as a transformers StoppingCriteria."""
from __future__ import annotations

import torch
from transformers import StoppingCriteria


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop a row when its generated tail equals a keyword's ids or its decoded tail contains a keyword."""

    def __init__(self, keywords: list[str], tokenizer, input_ids: torch.Tensor) -> None:
        self.keywords = keywords
        self.tokenizer = tokenizer
        self.keyword_ids = []
        self.max_keyword_len = 0
        bos = getattr(tokenizer, "bos_token_id", None)
        for keyword in keywords:
            ids = tokenizer(keyword).input_ids
            if len(ids) > 1 and ids[0] == bos:
                ids = ids[1:]
            self.max_keyword_len = max(self.max_keyword_len, len(ids))
            self.keyword_ids.append(torch.tensor(ids))
        # With inputs_embeds generation the output holds only new tokens, so everything is "new".
        self.start_len = input_ids.shape[1] if input_ids is not None else 0

    def _row_done(self, row: torch.Tensor) -> bool:
        for ids in self.keyword_ids:
            ids = ids.to(row.device)
            if ids.numel() and row.shape[0] >= ids.shape[0] and torch.equal(row[-ids.shape[0]:], ids):
                return True
        tail = row[-min(row.shape[0], self.max_keyword_len + 3):]
        text = self.tokenizer.decode(tail, skip_special_tokens=False)
        return any(k in text for k in self.keywords)

    def __call__(self, output_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        done = [self._row_done(row) for row in output_ids]
        return torch.tensor(done, dtype=torch.bool, device=output_ids.device)
