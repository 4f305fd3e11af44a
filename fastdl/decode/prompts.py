"""Prompts: what every search starts from, checked and made one left-padded batch.

A prompt batch is ``ids`` int64 ``(batch, P)`` and ``mask`` int64 ``(batch, P)``
of 0/1 with the padding on the left, as Hugging Face pads prompts for
decoder-only models; ``mask`` is None when no row is padded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastdl.decode.lm import INT64_MAX

__all__ = ["Prompts", "prompts"]


@dataclass(frozen=True)
class Prompts:
    """``ids`` (batch, P) int64, ``mask`` (batch, P) int64 or None (no padding),
    ``lengths`` (batch,) the unpadded lengths; ``single``: given as one prompt."""

    ids: np.ndarray
    mask: np.ndarray | None
    lengths: np.ndarray
    single: bool = False
    name: str = "input_ids"             # the argument they came from, for messages

    @property
    def batch(self) -> int:
        return self.ids.shape[0]

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def row(self, i: int) -> np.ndarray:
        """Prompt ``i`` without its padding."""
        return self.ids[i, self.width - int(self.lengths[i]):]

    def full_mask(self) -> np.ndarray:
        return np.ones(self.ids.shape, np.int64) if self.mask is None else self.mask

    def repeat(self, n: int) -> "Prompts":
        """Each row ``n`` times in a row (num_return_sequences for sampling)."""
        if n == 1:
            return self
        mask = None if self.mask is None else np.repeat(self.mask, n, axis=0)
        return Prompts(np.repeat(self.ids, n, axis=0), mask, np.repeat(self.lengths, n), False,
                       self.name)


def _int_ids(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and \
                np.all(arr == np.round(arr)):
            pass                            # whole floats (e.g. from a float array) are fine
        elif arr.size:
            raise TypeError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > INT64_MAX):
        bad = arr.min() if arr.min() < 0 else arr.max()
        raise ValueError(f"{name} must hold token ids >= 0, got {bad}")
    return arr.astype(np.int64)


def _from_lists(rows, pad, name: str) -> Prompts:
    out = []
    for i, r in enumerate(rows):
        try:
            a = np.asarray(r)
        except Exception as exc:  # noqa: BLE001
            raise TypeError(f"{name}[{i}] must be a list of token ids: {exc}") from None
        if a.ndim != 1:
            raise ValueError(f"{name}[{i}] must be a flat list of token ids, got shape {a.shape}")
        if a.size == 0:
            raise ValueError(f"{name}[{i}] is empty; every prompt needs at least one token "
                             "(start it with the model's bos token)")
        out.append(_int_ids(a, f"{name}[{i}]"))
    lengths = np.array([len(a) for a in out], np.int64)
    P = int(lengths.max())
    if (lengths == P).all():
        return Prompts(np.stack(out), None, lengths)
    if pad is None:
        raise ValueError(f"{name} holds prompts of different lengths ({int(lengths.min())} to "
                         f"{P} tokens), which are left-padded: give pad_token_id (or an eos "
                         "token, which Hugging Face uses as padding when pad_token_id is unset)")
    ids = np.full((len(out), P), pad, np.int64)
    mask = np.zeros((len(out), P), np.int64)
    for i, a in enumerate(out):
        ids[i, P - a.size:] = a
        mask[i, P - a.size:] = 1
    return Prompts(ids, mask, lengths)


def _check_mask(mask, shape, name: str) -> np.ndarray | None:
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"{name} must have the shape of input_ids {shape}, got {m.shape}")
    if m.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold 0/1 values, got dtype {m.dtype}")
    if m.size and not np.isin(m, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 (padding) and 1 (token), got "
                         f"{m[~np.isin(m, (0, 1))].flat[0]!r}")
    m = m.astype(np.int64)
    lengths = m.sum(axis=1)
    if (lengths == 0).any():
        raise ValueError(f"{name} row {int(np.flatnonzero(lengths == 0)[0])} has no token "
                         "(all 0): every prompt needs at least one")
    # left padding: each row is 0..0 1..1
    P = shape[1]
    left = np.arange(P)[None, :] >= (P - lengths)[:, None]
    if (m != left).any():
        r = int(np.flatnonzero((m != left).any(axis=1))[0])
        raise ValueError(f"{name} row {r} is {m[r].tolist()}: padding must be on the left "
                         "(0s before the 1s), as decoder-only models are padded for generation")
    return None if (lengths == P).all() else m


def prompts(input_ids=None, attention_mask=None, *, bos=None, pad=None, name: str = "input_ids",
            mask_name: str = "attention_mask") -> Prompts:
    """Check and normalize a prompt argument.

    ``input_ids``: an int array (batch, P) (with ``attention_mask``), a 1-D
    array or list of ids (one prompt: ``single``), a list of token lists of any
    lengths (left-padded with ``pad``), or None: the one-token prompt ``[bos]``.
    """
    p = _prompts(input_ids, attention_mask, bos, pad, name, mask_name)
    return Prompts(p.ids, p.mask, p.lengths, p.single, name)


def _prompts(input_ids, attention_mask, bos, pad, name, mask_name) -> Prompts:
    if input_ids is None:
        if attention_mask is not None:
            raise ValueError(f"{mask_name} was given without {name}")
        if bos is None:
            raise ValueError(f"give {name} (the prompts) or a bos token id to start from")
        return Prompts(np.array([[bos]], np.int64), None, np.ones(1, np.int64), True)
    if isinstance(input_ids, (list, tuple)) and input_ids and \
            all(isinstance(r, (list, tuple, np.ndarray)) for r in input_ids):
        p = _from_lists(input_ids, pad, name)
        if attention_mask is not None:
            m = _check_mask(attention_mask, p.ids.shape, mask_name)
            if p.mask is not None and (m is None or (m != p.mask).any()):
                raise ValueError(f"{mask_name} does not match the left padding of the "
                                 f"{name} lists; leave it out for lists")
            if m is not None and p.mask is None:
                p = Prompts(p.ids, m, m.sum(axis=1))
        return p
    try:
        arr = np.asarray(input_ids)
    except Exception as exc:  # noqa: BLE001
        raise TypeError(f"{name} must be an int array (batch, P) or a list of token lists: "
                        f"{exc}") from None
    if arr.dtype == object:
        raise TypeError(f"{name} must be an int array (batch, P) or a list of token lists, "
                        f"got an object array")
    single = arr.ndim == 1
    if single:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (batch, P) or one prompt (1-D), got shape "
                         f"{np.shape(input_ids)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one prompt of at least one token, got "
                         f"shape {arr.shape}")
    ids = _int_ids(arr, name)
    if attention_mask is None:
        return Prompts(ids, None, np.full(ids.shape[0], ids.shape[1], np.int64), single)
    m = _check_mask(np.asarray(attention_mask)[None, :] if single and np.ndim(attention_mask) == 1
                    else attention_mask, ids.shape, mask_name)
    lengths = np.full(ids.shape[0], ids.shape[1], np.int64) if m is None else m.sum(axis=1)
    return Prompts(ids, m, lengths, single)


def check_ids(p: Prompts, N: int) -> None:
    """Every unpadded token id within the vocabulary [0, N)."""
    real = p.ids if p.mask is None else p.ids[p.mask == 1]
    if real.size and int(real.max()) >= N:
        if p.name.endswith("_id"):               # a prompt made of one given token
            raise ValueError(f"{p.name} must be a token id in [0, {N}), got {int(real.max())}")
        raise ValueError(f"{p.name} must hold token ids in [0, {N}) (the vocabulary size), got "
                         f"{int(real.max())}")
