"""Iteration-level scheduling: which sequences run in the next step, and how many of
their tokens (no tensors, no I/O; tested directly).

Every step has a token budget (``max_num_batched_tokens``) and a cap on sequences
(``max_num_seqs``). Running sequences come first, oldest first: a decoding one needs one
token, one still prefilling gets the rest of its prompt or what is left of the budget
(chunked prefill), so a long prompt never holds up the others' next tokens. Then waiting
sequences join while budget, sequence slots and KV blocks last; a new one first takes
whatever full blocks of its prompt the prefix cache has. When a running sequence needs a
block and none is free, the newest running sequence is preempted: its blocks are given
back and it waits again, to be recomputed from its tokens (its full blocks usually
survive in the prefix cache, so recomputing is mostly cache hits). As in vLLM's V1
scheduler, there is no separate prefill or decode phase.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from raylite.llm._private.kv_cache import BlockManager, block_hash
from raylite.llm._private.sampling import SamplingParams

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    prompt: str | None = None
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_computed: int = 0          # tokens whose K/V are in the cache
    num_cached_tokens: int = 0     # prompt tokens found in the prefix cache (first time)
    status: str = WAITING
    finish_reason: str | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    num_preemptions: int = 0
    generator: object = None
    text: str = ""
    sent_text: int = 0             # characters of text already handed out
    sent_tokens: int = 0
    logprobs: list = field(default_factory=list)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)


@dataclass
class Scheduled:
    """One step's work: (sequence, number of tokens to compute) in batch order,
    decoding sequences first."""

    seqs: list[tuple[Sequence, int]]
    preempted: list[Sequence]
    num_decode: int = 0  # the first num_decode entries compute one token each

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.seqs)


class Scheduler:
    def __init__(self, blocks: BlockManager, *, max_num_seqs: int,
                 max_num_batched_tokens: int, enable_chunked_prefill: bool = True):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.budget = max_num_batched_tokens
        self.chunked = enable_chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out (finished or aborted) and give back its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq.block_table)
        seq.block_table = []

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.block_table)
        seq.block_table, seq.block_hashes = [], []
        seq.num_computed = 0
        seq.status = WAITING
        seq.num_preemptions += 1
        self.blocks.stats.preemptions += 1
        self.waiting.appendleft(seq)

    def _grow(self, seq: Sequence, n: int) -> bool:
        need = self.blocks.blocks_needed(seq.num_computed + n) - len(seq.block_table)
        if need <= 0:
            return True
        new = self.blocks.allocate(need)
        if new is None:
            return False
        seq.block_table.extend(new)
        return True

    def schedule(self) -> Scheduled:
        budget = self.budget
        out: list[tuple[Sequence, int]] = []
        preempted: list[Sequence] = []
        decode, prefill = [], []
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status != RUNNING:
                continue  # preempted earlier in this loop
            n = min(seq.num_tokens - seq.num_computed, budget)
            while not self._grow(seq, n):
                victim = next((s for s in reversed(self.running)
                               if s is not seq and all(s is not o for o, _ in out)), None)
                if victim is None:
                    victim = seq
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq.status != RUNNING:
                continue
            (decode if n == 1 else prefill).append((seq, n))
            out.append((seq, n))
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.block_table:
                self._match_prefix(seq)
            n = seq.num_tokens - seq.num_computed
            if not self.chunked and n > budget:
                if out or n <= self.budget:
                    self._unmatch(seq)
                    break
                raise ValueError("prompt longer than max_num_batched_tokens without "
                                 "chunked prefill")
            n = min(n, budget)
            if not self._grow(seq, n):
                self._unmatch(seq)
                break
            self.waiting.popleft()
            seq.status = RUNNING
            self.running.append(seq)
            prefill.append((seq, n))
            out.append((seq, n))
            budget -= n
        return Scheduled(decode + prefill, preempted, len(decode))

    def _match_prefix(self, seq: Sequence) -> None:
        # at least one token must be computed to produce the next token's logits
        blocks, hashes = self.blocks.match_prefix(seq.all_ids, seq.num_tokens - 1)
        seq.block_table, seq.block_hashes = blocks, hashes
        seq.num_computed = len(blocks) * self.blocks.block_size
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = seq.num_computed

    def _unmatch(self, seq: Sequence) -> None:
        st = self.blocks.stats
        st.queries -= seq.num_tokens
        st.hits -= seq.num_computed
        self.blocks.free(seq.block_table)
        seq.block_table, seq.block_hashes, seq.num_computed = [], [], 0

    def computed(self, seq: Sequence, n: int) -> None:
        """After a step: ``n`` more tokens of ``seq`` are in the cache; newly full
        blocks enter the prefix cache."""
        seq.num_computed += n
        bs = self.blocks.block_size
        ids = None
        for j in range(len(seq.block_hashes), seq.num_computed // bs):
            ids = ids if ids is not None else seq.all_ids
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            h = block_hash(parent, tuple(ids[j * bs:(j + 1) * bs]))
            self.blocks.register(seq.block_table[j], h)
            seq.block_hashes.append(h)
