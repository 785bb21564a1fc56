"""Sampling parameters and the sampler.

``SamplingParams`` follows vLLM's names (``max_tokens``, ``temperature``, ``top_p``,
``top_k``, ``stop``, ``stop_token_ids``, ``seed``, ``logprobs``, ``ignore_eos``); n=1
only. The sampler works on the whole step's logits at once; rows with a seed draw from
their own ``torch.Generator``, so a seeded request gives the same tokens whatever else
is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. ``temperature=0`` is greedy. ``logprobs=N``
    returns the chosen token's log-probability and the N most likely (0: only the
    chosen one's; None: none). Log-probabilities are of the model's raw distribution
    (before temperature/top-k/top-p), as vLLM's default."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError(f"logprobs must be in 0..20, got {self.logprobs}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]):
    """One token per row of ``logits`` [N, V]. Returns (token ids [N] on the CPU,
    per row: None or (chosen logprob, {token: logprob} of the top ones))."""
    N = logits.shape[0]
    greedy = torch.tensor([p.greedy for p in params])
    tokens = logits.argmax(dim=-1)
    if not bool(greedy.all()):
        rows = (~greedy).nonzero().flatten().tolist()
        tokens[rows] = _sample_rows(logits[rows], [params[i] for i in rows],
                                    [generators[i] for i in rows])
    tokens = tokens.cpu()
    lp_out: list = [None] * N
    want = [i for i, p in enumerate(params) if p.logprobs is not None]
    if want:
        lps = torch.log_softmax(logits[want].float(), dim=-1)
        for j, i in enumerate(want):
            chosen = float(lps[j, tokens[i]])
            top = {}
            if params[i].logprobs:
                v, ix = lps[j].topk(params[i].logprobs)
                top = dict(zip(ix.tolist(), v.tolist(), strict=True))
            lp_out[i] = (chosen, top)
    return tokens, lp_out


def _sample_rows(logits, params, generators):
    x = logits.float() / torch.tensor([p.temperature for p in params],
                                      device=logits.device)[:, None]
    top_k = [p.top_k for p in params]
    if any(k > 0 for k in top_k):
        V = x.shape[1]
        ks = torch.tensor([k if k > 0 else V for k in top_k], device=x.device).clamp(max=V)
        kth = x.sort(dim=-1, descending=True).values.gather(1, (ks - 1)[:, None])
        x = x.masked_fill(x < kth, float("-inf"))
    top_p = torch.tensor([p.top_p for p in params], device=x.device)
    if bool((top_p < 1).any()):
        sorted_x, order = x.sort(dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        # drop a token when the ones before it already reach top_p (keep at least one)
        drop = (probs.cumsum(-1) - probs) >= top_p[:, None]
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(1, order, sorted_x)
    probs = x.softmax(-1)
    out = torch.empty(len(params), dtype=torch.long, device=x.device)
    free = [i for i, g in enumerate(generators) if g is None]
    if free:
        out[free] = torch.multinomial(probs[free], 1).flatten()
    for i, g in enumerate(generators):
        if g is not None:
            out[i] = torch.multinomial(probs[i], 1, generator=g)[0]
    return out
