"""Response-only sequence log-probabilities, log pi(y | x) = sum_t log pi(y_t | x, y_<t).

Batches are laid out as ``[left-padded prompt | right-padded response]``: every prompt ends at the same
column P, so the response block is the last R columns and only those R positions need logits
(``logits_to_keep``). The full-vocabulary log-softmax is never materialised: a token's log-prob is its
logit minus the logsumexp over the vocabulary, computed in chunks of positions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, [N, T] -> [N, T] (0 at each row's first real token)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logps(logits: Tensor, labels: Tensor, chunk: int = 64) -> Tensor:
    """log softmax(logits)[labels] without a [N, R, V] log-softmax; logits [N, R, V], labels [N, R] -> [N, R].

    Computed in float32, ``chunk`` positions at a time, so the extra memory is O(N * chunk * V).
    """
    out = []
    for s in range(0, logits.size(1), chunk):
        lg = logits[:, s : s + chunk].float()
        picked = lg.gather(-1, labels[:, s : s + chunk].unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(lg, dim=-1))
    return torch.cat(out, dim=1)


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum over the last dim where mask is 1: [N, R], [N, R] -> [N]."""
    return (values * mask.to(values.dtype)).sum(-1)


def sequence_logps(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> Tensor:
    """log pi(y | x) for each row, [N, P + R] ids/mask and [N, R] response mask -> [N] (float32).

    Prompt tokens and padding contribute nothing. The logits at column P - 1 + r predict response token r,
    so R + 1 logits are kept and the last one (which predicts past the end) is dropped.
    """
    r = response_mask.size(1)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=r + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1]
    labels = input_ids[:, -r:]
    return masked_sum(token_logps(logits, labels), response_mask)


def summed_token_logps(token_logps: list[list[float]], response_ids: list[list[int]]) -> list[float]:
    """log pi(y | x) = sum_t log pi(y_t | x, y_<t) of each response, from an engine's per-token log-probs:
    K lists of T_k floats -> K floats. Each list must have one entry per response token (``response_ids``)."""
    for k, (lps, ids) in enumerate(zip(token_logps, response_ids, strict=True)):
        if len(lps) != len(ids):
            raise ValueError(f"response {k} has {len(ids)} tokens but {len(lps)} engine log-probs")
    return [float(sum(lps)) for lps in token_logps]
