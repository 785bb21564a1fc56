"""The paged KV cache's bookkeeping: fixed-size blocks, a free list, reference counts and
the prefix cache (full blocks found by a hash of their tokens chained to the block
before, kept after their last user leaves and evicted least recently used first).

Pure Python, no tensors: the tensors (one ``[num_blocks, block_size, kv_heads,
head_dim]`` pool per layer for K and one for V) live in the engine; a block id here is
an index into them. vLLM's block manager has the same ideas; this one is written for
reading, not for vLLM's feature set (no sliding windows, no swapping to CPU: a sequence
that does not fit is preempted and recomputed).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


def block_hash(parent: int | None, tokens: tuple[int, ...]) -> int:
    """The prefix-cache key of a full block: its tokens and the hash of the block
    before it, so equal keys mean equal prefixes, not just equal blocks."""
    return hash((parent, tokens))


@dataclass
class CacheStats:
    """Prefix-cache counters (tokens asked for / found in cached blocks)."""

    queries: int = 0
    hits: int = 0
    evictions: int = 0
    preemptions: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class BlockManager:
    """Allocates KV blocks to sequences and shares full blocks between equal prefixes.

    A block is in exactly one of three places: the free list (never filled or its
    contents dropped), in use (``ref > 0``), or cached (``ref == 0`` but holding a full
    block whose hash is known; reusable by a later prompt until evicted, oldest first).
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() gives 0 first
        self._ref = [0] * num_blocks
        self._hash_of: dict[int, int] = {}       # block -> hash (full, registered blocks)
        self._by_hash: dict[int, int] = {}       # hash -> block
        self._lru: OrderedDict[int, None] = OrderedDict()  # cached blocks, oldest first
        self.stats = CacheStats()

    # ------------------------------------------------------------------ queries
    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (free plus evictable cached ones)."""
        return len(self._free) + len(self._lru)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        return len(self._by_hash)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ------------------------------------------------------------------ allocation
    def _take(self) -> int:
        if self._free:
            b = self._free.pop()
        elif self._lru:
            b, _ = self._lru.popitem(last=False)
            del self._by_hash[self._hash_of.pop(b)]
            self.stats.evictions += 1
        else:
            raise MemoryError("no free KV block")
        self._ref[b] = 1
        return b

    def allocate(self, n: int) -> list[int] | None:
        """``n`` new blocks, or None (nothing taken) if there are not enough."""
        if n > self.num_free:
            return None
        return [self._take() for _ in range(n)]

    def free(self, blocks: list[int]) -> None:
        """Drop one reference to each block; a full hashed block stays cached."""
        for b in reversed(blocks):  # the tail first, so a chain's head is evicted last
            self._ref[b] -= 1
            if self._ref[b] > 0:
                continue
            if b in self._hash_of:
                self._lru[b] = None
            else:
                self._free.append(b)

    # ------------------------------------------------------------------ prefix cache
    def match_prefix(self, tokens: list[int], max_tokens: int) -> tuple[list[int], list[int]]:
        """Cached blocks for the longest run of full blocks of ``tokens`` (at most
        ``max_tokens`` tokens), each taken by one more reference; returns
        ``(blocks, hashes)``. Counts the lookup in the stats."""
        self.stats.queries += len(tokens)
        if not self.enable_prefix_caching:
            return [], []
        blocks, hashes, parent = [], [], None
        bs = self.block_size
        for i in range(min(len(tokens), max_tokens) // bs):
            h = block_hash(parent, tuple(tokens[i * bs:(i + 1) * bs]))
            b = self._by_hash.get(h)
            if b is None:
                break
            if self._ref[b] == 0:
                del self._lru[b]
            self._ref[b] += 1
            blocks.append(b)
            hashes.append(h)
            parent = h
        self.stats.hits += len(blocks) * bs
        return blocks, hashes

    def register(self, block: int, h: int) -> None:
        """Mark a block as full with contents ``h``, so later prompts can share it. If an
        equal block is already cached, this one simply stays private."""
        if not self.enable_prefix_caching or block in self._hash_of or h in self._by_hash:
            return
        self._hash_of[block] = h
        self._by_hash[h] = block

    def reset_prefix_cache(self) -> None:
        """Forget every cached block that nobody uses."""
        for b in list(self._lru):
            del self._by_hash[self._hash_of.pop(b)]
            self._free.append(b)
        self._lru.clear()
