"""Attention over the paged KV cache.

Each layer keeps K and V in pools of shape ``[num_blocks, block_size, kv_heads,
head_dim]``. A step's new K/V are written into their slots in place (``index_copy_``);
nothing is ever moved afterwards.

Decode tokens (one query each) read their sequence's blocks where they lie, without
gathering a contiguous copy: the step's (query head, key slot) pairs form a sparse
pattern (a CSR matrix whose rows are query heads and whose columns are rows of the K
pool viewed as ``[slots * kv_heads, head_dim]``), so the scores are one sampled dense
matmul (``torch.sparse.sampled_addmm``: ``q . k`` only where the pattern has an entry),
a softmax over each row's entries, and one sparse-times-dense matmul with the V pool.
Measured on this CPU, gathering the batch's blocks into a padded tensor each step made
decode attention ~3x slower than attention over an ideal contiguous cache; the sparse
form is ~1.7x (vLLM does this with a CUDA kernel; torch has none for CPU).

On the CPU in float32 the decode rows go to a compiled C kernel instead
(``cpu_kernel.py``, attention="kernel"): it walks each sequence's block table and reads
the keys and values in place, ~6x faster than the sparse form; the sparse form remains
for other dtypes and machines without a C compiler.

Prefill chunks run dense: first chunks attend causally to themselves (equal-length ones
batched into one call); a later chunk (or one after a prefix-cache hit) gathers its own
sequence's earlier keys once per chunk.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from raylite.llm._private import cpu_kernel


@dataclass
class PrefillChunk:
    """One sequence's chunk in a step: tokens ``[tok_start, tok_end)`` of the step's
    flat batch, at positions ``start ..``; ``ctx_slots`` are the slots of positions
    ``0 .. start + n - 1`` (None for a first chunk, which needs only its own K/V)."""

    tok_start: int
    tok_end: int
    start: int
    ctx_slots: torch.Tensor | None


@dataclass
class FirstChunks:
    """``count`` first chunks (no earlier context) of ``length`` tokens each, adjacent
    in the step's batch from ``tok_start``: attended in one batched causal call."""

    tok_start: int
    count: int
    length: int


@dataclass
class AttentionMetadata:
    """Where a step's tokens go and what they read, shared by every layer."""

    slots: torch.Tensor                  # [T] slot of each new token (block * bs + offset)
    num_decode: int                      # the first num_decode tokens are decode tokens
    crow: torch.Tensor | None = None     # CSR pattern of the decode rows (t * H + h)
    cols: torch.Tensor | None = None     # [nnz] row of the K/V pool viewed as [slots*Hk, hd]
    pad_idx: torch.Tensor | None = None  # [nnz] entry -> place in a [rows, pad_len] grid
    pad_len: int = 0                     # the longest decode row
    gather_tables: torch.Tensor | None = None  # [Bd, L] slots, for attention="gather"
    decode_lens: torch.Tensor | None = None    # [Bd] keys per decode row (gather, kernel)
    block_tables: torch.Tensor | None = None   # [Bd, W] block ids, for attention="kernel"
    block_size: int = 0
    prefills: list = field(default_factory=list)  # PrefillChunk or FirstChunks


def build_metadata(decode: list[tuple[list[int], int]],
                   prefill: list[tuple[list[int], int, int]], *, block_size: int,
                   num_heads: int, num_kv_heads: int, device, backend: str = "sparse"
                   ) -> AttentionMetadata:
    """Index tensors for one step. ``decode``: (block table, position of the new token)
    per decoding sequence; ``prefill``: (block table, first position, chunk length)."""
    bs = block_size
    slot_list: list[int] = []
    for table, pos in decode:
        slot_list.append(table[pos // bs] * bs + pos % bs)
    chunks = []
    tok = len(decode)
    for table, start, n in prefill:
        end = start + n
        pos_slots = [table[p // bs] * bs + p % bs for p in range(end)]
        slot_list.extend(pos_slots[start:])
        if start == 0:
            last = chunks[-1] if chunks else None
            if isinstance(last, FirstChunks) and last.length == n:
                last.count += 1
            else:
                chunks.append(FirstChunks(tok, 1, n))
        else:
            chunks.append(PrefillChunk(tok, tok + n, start,
                                       torch.tensor(pos_slots, dtype=torch.long)))
        tok += n
    md = AttentionMetadata(slots=torch.tensor(slot_list, dtype=torch.long),
                           num_decode=len(decode), prefills=chunks)
    if decode:
        lens = torch.tensor([pos + 1 for _, pos in decode], dtype=torch.long)
        width = max(len(t) for t, _ in decode)
        tables = torch.tensor([t + [0] * (width - len(t)) for t, _ in decode],
                              dtype=torch.long)
        if backend == "kernel":
            md.block_tables, md.decode_lens = tables, lens
            md.pad_len, md.block_size = int(lens.max()), bs
        elif backend == "gather":
            kpos = torch.arange(int(lens.max()))
            md.gather_tables = tables[:, kpos // bs] * bs + kpos % bs
            md.decode_lens = lens
        else:
            _decode_pattern(md, tables, lens, bs, num_heads, num_kv_heads,
                            sort=torch.device(device).type != "cpu")
    return _to(md, device)


def _decode_pattern(md, tables, lens, bs, H, Hk, sort):
    """The CSR pattern of the decode rows, built on a padded [B, H, L] grid of slots:
    a handful of ops on the grid (computing per entry from row ids took ~2x longer)."""
    B = tables.shape[0]
    L = int(lens.max())
    kpos = torch.arange(L)
    slot = tables[:, kpos // bs] * bs + kpos % bs            # [B, L]
    head = torch.arange(H) // (H // Hk)                       # query head -> its K/V head
    grid = slot[:, None, :] * Hk + head[None, :, None]        # [B, H, L]
    valid = (kpos[None, :] < lens[:, None])[:, None, :].expand(B, H, L)
    pad_idx = valid.reshape(-1).nonzero().squeeze(1)          # row-major: CSR order
    cols = grid.reshape(-1).index_select(0, pad_idx)
    crow = torch.zeros(B * H + 1, dtype=torch.long)
    torch.cumsum(lens.repeat_interleave(H), 0, out=crow[1:])
    if sort:  # some GPU sparse kernels want sorted columns within a row
        row_ids = pad_idx // L
        cols = (row_ids * (cols.max() + 1) + cols).sort().values % (cols.max() + 1)
    md.pad_len = L
    md.crow, md.cols, md.pad_idx = crow, cols, pad_idx


def _to(md: AttentionMetadata, device) -> AttentionMetadata:
    for name in ("slots", "crow", "cols", "pad_idx", "gather_tables", "decode_lens",
                 "block_tables"):
        t = getattr(md, name)
        if t is not None:
            setattr(md, name, t.to(device, non_blocking=True))
    for c in md.prefills:
        if isinstance(c, PrefillChunk):
            c.ctx_slots = c.ctx_slots.to(device, non_blocking=True)
    return md


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_pool: torch.Tensor, v_pool: torch.Tensor,
                    md: AttentionMetadata, scale: float) -> torch.Tensor:
    """Attention for a step's flat batch of tokens. ``q``: [T, H, hd]; ``k``, ``v``:
    [T, Hk, hd] (the new tokens', written into the pools here); returns [T, H*hd]."""
    T, H, hd = q.shape
    Hk = k.shape[1]
    kp = k_pool.view(-1, Hk, hd)
    vp = v_pool.view(-1, Hk, hd)
    kp.index_copy_(0, md.slots, k)
    vp.index_copy_(0, md.slots, v)
    out = q.new_empty(T, H, hd)
    nd = md.num_decode
    if nd:
        if md.block_tables is not None:
            out[:nd] = cpu_kernel.paged_decode(q[:nd], kp, vp, md.block_tables,
                                               md.decode_lens, md.pad_len, md.block_size,
                                               scale)
        elif md.crow is not None:
            out[:nd] = _decode_sparse(q[:nd], kp, vp, md, scale)
        else:
            out[:nd] = _decode_gather(q[:nd], kp, vp, md, scale)
    for c in md.prefills:
        if isinstance(c, FirstChunks):
            # first chunks of equal length, adjacent in the batch: one batched call
            a, b = c.tok_start, c.tok_start + c.count * c.length
            qs = q[a:b].view(c.count, c.length, H, hd).transpose(1, 2)  # (S, H, C, hd)
            ks = _expand_kv(k[a:b].view(c.count, c.length, Hk, hd).transpose(1, 2), H, 1)
            vs = _expand_kv(v[a:b].view(c.count, c.length, Hk, hd).transpose(1, 2), H, 1)
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
            out[a:b] = o.transpose(1, 2).reshape(b - a, H, hd)
            continue
        qc = q[c.tok_start:c.tok_end].transpose(0, 1)            # (H, C, hd)
        kc, vc = kp[c.ctx_slots], vp[c.ctx_slots]                # (L, Hk, hd)
        qpos = torch.arange(c.start, c.start + qc.shape[1], device=q.device)
        mask = torch.arange(kc.shape[0], device=q.device)[None, :] <= qpos[:, None]
        kc, vc = _expand_kv(kc.transpose(0, 1), H), _expand_kv(vc.transpose(0, 1), H)
        o = F.scaled_dot_product_attention(qc[None], kc[None], vc[None], attn_mask=mask,
                                           scale=scale)
        out[c.tok_start:c.tok_end] = o[0].transpose(0, 1)
    return out.view(T, H * hd)


def _expand_kv(x: torch.Tensor, H: int, dim: int = 0) -> torch.Tensor:
    """(.., Hk, L, hd) -> (.., H, L, hd) for grouped-query attention."""
    Hk = x.shape[dim]
    return x if Hk == H else x.repeat_interleave(H // Hk, dim=dim)


def _decode_sparse(q, kp, vp, md, scale):
    B, H, hd = q.shape
    n_cols = kp.shape[0] * kp.shape[1]
    with warnings.catch_warnings():  # torch's "CSR support is in beta", once
        warnings.simplefilter("ignore")
        pattern = torch.sparse_csr_tensor(md.crow, md.cols, q.new_zeros(md.cols.shape[0]),
                                          size=(B * H, n_cols), check_invariants=False)
    s = torch.sparse.sampled_addmm(pattern, q.reshape(B * H, hd), kp.view(n_cols, hd).t(),
                                   beta=0.0, alpha=scale).values()
    # softmax within each row: lay the entries out in a padded grid (-inf elsewhere), so
    # the softmax is one dense op (segment reductions measured ~5x slower here)
    grid = s.new_full((B * H * md.pad_len,), float("-inf"))
    grid.index_copy_(0, md.pad_idx, s)
    probs = grid.view(B * H, md.pad_len).softmax(-1).view(-1).index_select(0, md.pad_idx)
    p = torch.sparse_csr_tensor(md.crow, md.cols, probs, size=(B * H, n_cols),
                                check_invariants=False)
    return (p @ vp.view(n_cols, hd)).view(B, H, hd)


def _decode_gather(q, kp, vp, md, scale):
    """The straightforward alternative: a padded copy of the batch's keys each step."""
    B, H, hd = q.shape
    slots, lens = md.gather_tables, md.decode_lens                # [B, L], [B]
    kb = kp[slots].permute(0, 2, 1, 3)                             # (B, Hk, L, hd)
    vb = vp[slots].permute(0, 2, 1, 3)
    if kb.shape[1] != H:
        kb = kb.repeat_interleave(H // kb.shape[1], dim=1)
        vb = vb.repeat_interleave(H // vb.shape[1], dim=1)
    mask = torch.arange(slots.shape[1], device=q.device)[None, :] < lens[:, None]
    o = F.scaled_dot_product_attention(q[:, :, None], kb, vb, attn_mask=mask[:, None, None],
                                       scale=scale)
    return o[:, :, 0]
