"""``DataIterator``: batches out of a stream of blocks (Ray: ``ray.data.DataIterator``).

What ``Dataset.iter_batches`` uses, and what ``streaming_split`` and
``train.get_dataset_shard`` hand out. A DataIterator can be pickled and sent to a task or
actor; each ``iter_batches`` call is one pass (epoch) over its data.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

import raylite
from raylite.data import block as B

__all__ = ["DataIterator"]


class DataIterator:
    """Iterates batches over blocks that ``_pieces()`` yields as
    ``(block_ref, start, end)`` (``end=None``: to the block's end)."""

    def _pieces(self) -> Iterator[tuple]:
        raise NotImplementedError

    def _blocks(self) -> Iterator[B.Block]:
        for ref, start, end in self._pieces():
            block = raylite.get(ref)
            if start or end is not None:
                block = B.slice_block(block, start or 0, B.num_rows(block) if end is None
                                      else end)
            yield block

    def iter_batches(self, *, prefetch_batches: int = 1, batch_size: int | None = 256,
                     batch_format: str | None = "default", drop_last: bool = False,
                     local_shuffle_buffer_size: int | None = None,
                     local_shuffle_seed: int | None = None) -> Iterator:
        """Batches of ``batch_size`` rows (None: one batch per block) in ``batch_format``
        (``"default"``/``"numpy"``: dict of arrays, ``"pandas"``, ``"pyarrow"``).

        Differs from Ray: prefetching is by blocks (the executor keeps tasks running
        ahead of the consumer), so ``prefetch_batches`` is accepted and not used. Arrays
        of a batch that is a slice of one block are read-only views of the object store.
        """
        fmt = B.check_format(batch_format)
        rng = np.random.default_rng(local_shuffle_seed)
        for batch in _rebatch(self._blocks(), batch_size, drop_last,
                              local_shuffle_buffer_size, rng):
            yield B.to_batch(batch, fmt)

    def iter_torch_batches(self, *, prefetch_batches: int = 1,
                           batch_size: int | None = 256, dtypes=None, device: str = "auto",
                           collate_fn=None, drop_last: bool = False,
                           local_shuffle_buffer_size: int | None = None,
                           local_shuffle_seed: int | None = None) -> Iterator:
        """Batches as dicts of torch tensors on ``device`` (``"auto"``: the Train
        worker's device, else CPU). ``dtypes`` is one torch dtype or a dict per column.
        Columns read-only in the object store are copied, so tensors are writable."""
        import torch

        if device == "auto":
            device = _auto_device()
        for batch in self.iter_batches(batch_size=batch_size, drop_last=drop_last,
                                       local_shuffle_buffer_size=local_shuffle_buffer_size,
                                       local_shuffle_seed=local_shuffle_seed):
            if collate_fn is not None:
                yield collate_fn(batch)
                continue
            out = {}
            for k, v in batch.items():
                if v.dtype == object:
                    out[k] = v
                    continue
                if not v.flags.writeable:
                    v = np.array(v)
                t = torch.from_numpy(v)
                dt = dtypes.get(k) if isinstance(dtypes, dict) else dtypes
                if dt is not None:
                    t = t.to(dt)
                out[k] = t.to(device) if device not in (None, "cpu") else t
            yield out

    def iter_rows(self) -> Iterator[dict]:
        for block in self._blocks():
            yield from B.to_rows(block)

    def materialize_block(self) -> B.Block:
        """Everything this iterator yields, as one block (a raylite helper)."""
        return B.concat(list(self._blocks()))


# What ``device="auto"`` means in this process: set by raylite.train while a training
# worker runs (its device: its GPU when the trainer uses GPUs), else the CPU. A hook and
# not an import, so Data never imports Train (Train imports Data for its datasets).
auto_device_fn = None


def _auto_device():
    fn = auto_device_fn
    return fn() if fn is not None else "cpu"


def _rebatch(blocks, batch_size, drop_last, shuffle_buffer, rng) -> Iterator[B.Block]:
    """Blocks re-cut into batches of ``batch_size`` rows; with a shuffle buffer, each
    batch is drawn at random from at least ``shuffle_buffer`` buffered rows."""
    if batch_size is None and not shuffle_buffer:
        yield from (b for b in blocks if B.num_rows(b))
        return
    size = batch_size or 256
    buf: list[B.Block] = []
    have = 0
    need = size + (shuffle_buffer or 0)
    for block in blocks:
        n = B.num_rows(block)
        if not n:
            continue
        buf.append(block)
        have += n
        while have >= need:
            batch, buf = _take(buf, size, shuffle_buffer, rng)
            have -= size
            yield batch
    while have >= size or (have and not drop_last):
        k = min(size, have)
        batch, buf = _take(buf, k, shuffle_buffer, rng)
        have -= k
        yield batch


def _take(buf: list[B.Block], k: int, shuffle: int | None, rng) -> tuple[B.Block, list]:
    if shuffle:
        whole = B.concat(buf)
        n = B.num_rows(whole)
        pick = rng.choice(n, size=k, replace=False)
        mask = np.ones(n, dtype=bool)
        mask[pick] = False
        return B.take_rows(whole, pick), [B.take_rows(whole, np.nonzero(mask)[0])]
    out, left = [], k
    while left:
        b = buf[0]
        n = B.num_rows(b)
        if n <= left:
            out.append(b)
            buf = buf[1:]
            left -= n
        else:
            out.append(B.slice_block(b, 0, left))
            buf = [B.slice_block(b, left, n)] + buf[1:]
            left = 0
    return B.concat(out), buf
