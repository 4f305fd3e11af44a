"""The normalization counts of fastdl.complexity against what fastdl.norm_stats reduces."""
import math

import numpy as np
import pytest

from fastdl import complexity as cx
from fastdl._backends.numpy import norm as ref
from fastdl.norm import norm_stats

CASES = [((4, 2, 3), "batch", None), ((4, 2, 3), "layer", None), ((4, 2, 3), "instance", None),
         ((2, 4, 3, 3), "group", 2), ((2, 6, 5), "group", 3), ((3, 4, 2, 2), "group", 1),
         ((2, 3), "batch", None), ((2, 3, 2, 1, 2), "instance", None), ((1, 5, 4), "layer", None),
         ((2, 4, 3), "group", 4)]


def _groups_by_hand(shape, kind, G):
    """Each element's statistic index, computed from the definition of the kind."""
    N, C = shape[0], shape[1]
    S = math.prod(shape[2:])
    n, c, _ = np.meshgrid(np.arange(N), np.arange(C), np.arange(S), indexing="ij")
    idx = {"batch": c, "layer": n, "instance": n * C + c,
           "group": n * (G or 1) + c // (C // (G or 1))}[kind]
    return idx.reshape(-1)


def test_the_course_tensor_by_hand():
    # the 4 x 2 x 3 tensor: batch norm divides by B·F = 12, layer by C·F = 6, instance by F = 3
    assert cx.norm_elements_per_statistic((4, 2, 3), "batch") == 12
    assert cx.norm_elements_per_statistic((4, 2, 3), "layer") == 6
    assert cx.norm_elements_per_statistic((4, 2, 3), "instance") == 3
    assert [cx.norm_statistics((4, 2, 3), k) for k in ("batch", "layer", "instance")] == [2, 4, 8]
    # an (N, C, H, W) image with G groups: (C/G)·H·W per (sample, group)
    assert cx.norm_elements_per_statistic((8, 32, 7, 7), "group", num_groups=4) == 8 * 49
    assert cx.norm_statistics((8, 32, 7, 7), "group", num_groups=4) == 32
    assert cx.norm_elements_per_statistic((8, 32, 7, 7), "batch") == 8 * 49
    assert cx.norm_elements_read((8, 32, 7, 7), "layer") == 8 * 32 * 49


@pytest.mark.parametrize("shape,kind,G", CASES)
def test_norm_stats_reduces_exactly_the_counted_elements(shape, kind, G):
    m = cx.measure_norm_stats(shape, kind, num_groups=G)
    per = cx.norm_elements_per_statistic(shape, kind, num_groups=G)
    stats = cx.norm_statistics(shape, kind, num_groups=G)
    assert m["statistics"] == stats
    assert sorted(m["members"]) == list(range(stats))           # every statistic is reached
    assert set(m["members"].values()) == {per}                  # by exactly `per` elements
    assert set(m["divisors"].values()) == {per}                 # and divides by `per`
    assert m["elements_read"] == cx.norm_elements_read(shape, kind, num_groups=G) \
        == math.prod(shape)                                     # each element in one statistic


@pytest.mark.parametrize("shape,kind,G", CASES)
def test_the_statistic_of_each_element_is_the_one_the_definition_names(shape, kind, G):
    x = np.zeros(shape)
    owner = []
    for flat in range(x.size):
        x.reshape(-1)[flat] = 1.0
        mean, _ = norm_stats(x, kind, num_groups=G)
        x.reshape(-1)[flat] = 0.0
        owner.append(int(np.flatnonzero(np.asarray(mean).reshape(-1))[0]))
    np.testing.assert_array_equal(owner, _groups_by_hand(shape, kind, G))


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_every_backend_reduces_the_same_counts(backend):
    pytest.importorskip("fastdl._backends.cython")
    for shape, kind, G in CASES[:4]:
        m = cx.measure_norm_stats(shape, kind, num_groups=G, backend=backend)
        assert set(m["members"].values()) == {cx.norm_elements_per_statistic(
            shape, kind, num_groups=G)}


class _Reductions(np.ndarray):
    """Records (elements in, results out) of every np.mean / np.var on it."""

    calls: list = []

    def __array_function__(self, func, types, args, kwargs):
        plain = [a.view(np.ndarray) if isinstance(a, np.ndarray) else a for a in args]
        out = func(*plain, **kwargs)
        if func in (np.mean, np.var):
            _Reductions.calls.append((func.__name__, plain[0].size, np.size(out)))
        return out


@pytest.mark.parametrize("shape,kind,G", CASES)
def test_the_reference_mean_and_var_reduce_the_counted_elements(shape, kind, G):
    _Reductions.calls = []
    x = np.random.default_rng(0).standard_normal(shape).view(_Reductions)
    ref.norm_stats(x, kind, G, 0)
    stats = cx.norm_statistics(shape, kind, num_groups=G)
    per = cx.norm_elements_per_statistic(shape, kind, num_groups=G)
    assert [c[0] for c in _Reductions.calls] == ["mean", "var"]
    for _, size, out in _Reductions.calls:
        assert (size, out, size // out) == (cx.norm_elements_read(shape, kind, num_groups=G),
                                            stats, per)


@pytest.mark.parametrize("call,match", [
    (lambda: cx.norm_statistics((4,), "batch"), "shape must be"),
    (lambda: cx.norm_statistics((4, 0, 3), "batch"), "shape must be"),
    (lambda: cx.norm_statistics((4, 2, 3), "rms"), "kind must be one of"),
    (lambda: cx.norm_statistics((4, 6, 3), "group", num_groups=4), "dividing C=6"),
    (lambda: cx.norm_statistics((4, 6, 3), "group"), "num_groups must be"),
    (lambda: cx.norm_statistics((4, 6, 3), "layer", num_groups=2), "only used with"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_shape_must_be_a_tuple():
    with pytest.raises(TypeError, match="shape must be a tuple"):
        cx.norm_elements_read(12, "batch")
