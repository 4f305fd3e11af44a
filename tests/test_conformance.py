"""The conformance suite (fastdl.testing.conformance) on both built-in backends and on
a toy backend that implements two ops: it passes those and declines the rest."""
import numpy as np
import pytest

from fastdl import ops
from fastdl.registry import Backend
from fastdl.testing import conformance


def _toy_topk(x, k):
    # stable descending order; NaN first, as torch.topk and the built-in backends
    key = np.where(np.isnan(x), -np.inf, -x.astype(np.float64))
    key = np.where(np.isnan(x), -np.inf, key)
    idx = np.argsort(np.where(np.isnan(x), -np.inf, key), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(x, idx, axis=1), idx.astype(np.int64)


def _toy_rms_norm_fwd(x, w, eps, out):
    x64 = x.astype(np.float64)
    ms = np.mean(x64 * x64, axis=1)
    y = x64 / np.sqrt(ms + eps)[:, None]
    if w is not None:
        y = y * w
    y = y.astype(x.dtype)
    if out is None:
        return y, ms
    out[...] = y
    return out, ms


TOY = Backend(name="toy", ops={"topk": _toy_topk, "rms_norm_fwd": _toy_rms_norm_fwd})

test_builtin_backends = conformance.make_test("numpy", "cython")
test_toy_backend = conformance.make_test(TOY)


def test_toy_backend_report_passes_two_and_declines_the_rest():
    res = conformance.report(TOY)
    assert res["topk"] == "pass" and res["rms_norm_fwd"] == "pass", res
    others = {op: r for op, r in res.items() if op not in ("topk", "rms_norm_fwd")}
    assert others and all(r.startswith("declines:") for r in others.values()), others


def test_a_wrong_backend_fails_the_suite():
    """The suite can fail: a toy top-k that returns ascending order, one that ignores out,
    and one with the wrong signature are each caught."""
    def ascending(x, k):
        idx = np.argsort(x, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(x, idx, axis=1), idx.astype(np.int64)

    def rms_ignores_w(x, w, eps, out):
        return _toy_rms_norm_fwd(x, None, eps, out)

    bad = Backend(name="bad", ops={"topk": ascending, "rms_norm_fwd": rms_ignores_w})
    res = conformance.report(bad, ["topk", "rms_norm_fwd"])
    assert res["topk"].startswith("FAIL") and res["rms_norm_fwd"].startswith("FAIL"), res
    res = conformance.report(Backend(name="sig", ops={"topk": lambda x, kk: None}), ["topk"])
    assert res["topk"].startswith("FAIL") and "takes (x, kk)" in res["topk"], res


def test_bad_input_table_covers_every_argument():
    for spec in ops.BUILTIN_OPS:
        args = conformance._valid_with_out(spec, 0, np.float32)
        named = {label.split(":")[0] for label, _, _ in conformance.bad_inputs(spec, args)}
        assert named == set(spec.arg_names), (spec.name, set(spec.arg_names) - named)


def test_cython_op_table_is_built_from_the_kernel_modules():
    cy = pytest.importorskip("fastdl._backends.cython")
    assert set(cy.backend.ops) == {op.name for op in ops.BUILTIN_OPS}

    def topk(x, kk, nthreads):        # wrong argument name
        return None

    def log_softmax(x, out):          # no thread count
        return None

    assert cy._kernel_problem(ops.topk, topk) is not None
    assert cy._kernel_problem(ops.log_softmax, log_softmax) is not None
    assert cy._kernel_problem(ops.topk, lambda x, k, nthreads, extra=1: None) is None
