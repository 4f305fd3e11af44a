"""Argument facts of the Cython BiRNN kernels (_rnn.pyx) and the packed order of a
padded batch, in Python: what the drivers index memory with is checked here before
they release the GIL (the op's own check says the same in user terms; the kernels
are also reachable directly)."""
import numpy as np

_INT_MAX = 2 ** 31 - 1


def plan_of(lengths, T, B):
    """(n, off, seq, packed) of a batch: n[t] sequences run at step t (n[T] = 0), step t's
    packed rows start at off[t], packed row r is batch entry seq[r] (sorted by length,
    descending, stable); packed False: the packed order is the (t, b) order."""
    if lengths is None or bool((lengths == T).all()):
        n = np.full(T + 1, B, np.int64)
        n[T] = 0
        return n, np.arange(T + 1, dtype=np.int64) * B, np.arange(B, dtype=np.int64), False
    seq = np.argsort(-lengths, kind="stable").astype(np.int64)
    n = np.zeros(T + 1, np.int64)
    n[:T] = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)
    off = np.zeros(T + 1, np.int64)
    np.cumsum(n[:T], out=off[1:])
    return n, off, seq, True


def shape_of(a):
    return getattr(a, "shape", type(a).__name__)


def check(x, named, lengths):
    """Shapes and dtypes the drivers index memory with (the op's check says the same
    in user terms; these kernels are also reachable directly).  Returns (T, B, I, H, O)."""
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be a float32/float64 (T, B, I) array, got {shape_of(x)}")
    T, B, I = x.shape
    W_f, V_f = named["W_f"][0], named["V_f"][0]
    if not (isinstance(W_f, np.ndarray) and W_f.ndim == 2 and isinstance(V_f, np.ndarray)
            and V_f.ndim == 2):
        raise ValueError(f"W_f and V_f must be 2-D arrays, got {shape_of(W_f)}, "
                         f"{shape_of(V_f)}")
    H, O = W_f.shape[0], V_f.shape[0]
    dims = {"T": T, "B": B, "I": I, "H": H, "O": O}
    if min(T, B, I) < 1 or max(T * B, I, H, O) > _INT_MAX:       # BLAS takes 32-bit ints
        raise ValueError(f"x must be non-empty with T*B, I, H, O <= {_INT_MAX}, got x "
                         f"{x.shape}, H={H}, O={O}")
    for name, (a, shape) in named.items():
        if a is None and name in ("b_f", "b_b", "c", "h0_f", "h0_b"):
            continue
        want = tuple(dims[s] for s in shape)
        if not isinstance(a, np.ndarray) or a.dtype != x.dtype or a.shape != want \
                or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous {x.dtype} array of shape {want}, "
                             f"got {shape_of(a)} {getattr(a, 'dtype', '')}")
    if lengths is not None:
        if not isinstance(lengths, np.ndarray) or lengths.dtype != np.int64 \
                or lengths.shape != (B,):
            raise ValueError(f"lengths must be an int64 array of shape ({B},), got "
                             f"{shape_of(lengths)}")
        if lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"lengths must be in [1, T={T}]")
    return T, B, I, H, O


WEIGHTS = (("W_f", "HI"), ("U_f", "HH"), ("V_f", "OH"), ("W_b", "HI"), ("U_b", "HH"),
           ("V_b", "OH"))
