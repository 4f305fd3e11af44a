"""fastdl.nn layers against torch.nn: the constructor arguments torch accepts (``bias=``)
and unbatched instance-norm inputs, forward, backward and running statistics."""
import inspect

import numpy as np
import pytest

import fastdl.nn as nn

torch = pytest.importorskip("torch")



def pair(cls_name, *args, backend, **kwargs):
    """(fastdl layer, torch layer) built from the same arguments, float64, with the same
    random parameters."""
    ours = getattr(nn, cls_name.rstrip("123d") if cls_name.startswith("BatchNorm")
                   else cls_name)(*args, dtype=np.float64, backend=backend, **kwargs)
    theirs = getattr(torch.nn, cls_name)(*args, dtype=torch.float64, **kwargs)
    g = np.random.default_rng(len(args) + len(kwargs))
    for name in ("weight", "bias"):
        p = getattr(theirs, name)
        assert (p is None) == (name not in ours.params), name
        if p is not None:
            values = g.standard_normal(tuple(p.shape))
            ours.params[name][...] = values
            with torch.no_grad():
                p.copy_(torch.from_numpy(values))
    return ours, theirs


def run_both(ours, theirs, x, dy):
    theirs.zero_grad()             # torch accumulates .grad; fastdl's backward overwrites
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = theirs(tx)
    ty.backward(torch.from_numpy(dy))
    y = ours(x)
    dx = ours.backward(dy)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-10)
    for name in ("weight", "bias"):
        p = getattr(theirs, name)
        if p is not None:
            np.testing.assert_allclose(ours.grads[name], p.grad.numpy(), rtol=1e-9, atol=1e-10)
    for buf in ("running_mean", "running_var"):
        if getattr(theirs, buf, None) is not None:
            np.testing.assert_allclose(getattr(ours, buf), getattr(theirs, buf).numpy(),
                                       rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", ["BatchNorm1d", "BatchNorm2d", "GroupNorm", "InstanceNorm1d",
                                 "InstanceNorm2d", "InstanceNorm3d", "LayerNorm"])
def test_bias_argument_as_torch(cls):
    """Same keyword, same default, same kind (keyword-only where torch has it so)."""
    torch_param = inspect.signature(getattr(torch.nn, cls).__init__).parameters["bias"]
    ours_cls = getattr(nn, cls[:-2] if cls.startswith("BatchNorm") else cls)
    ours_param = inspect.signature(ours_cls.__init__).parameters["bias"]
    assert ours_param.default == torch_param.default is True
    if torch_param.kind is inspect.Parameter.KEYWORD_ONLY:
        assert ours_param.kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, True),
                                         (False, False)])
@pytest.mark.parametrize("cls,args,shape", [
    ("BatchNorm1d", (4,), (6, 4, 5)),
    ("BatchNorm2d", (4,), (3, 4, 2, 3)),
    ("GroupNorm", (2, 4), (3, 4, 5)),
    ("InstanceNorm1d", (4,), (3, 4, 5)),
    ("InstanceNorm2d", (4,), (2, 4, 3, 3)),
], ids=str)
def test_bias_false_keeps_weight_drops_bias(cls, args, shape, affine, bias, backend):
    ours, theirs = pair(cls, *args, affine=affine, bias=bias, backend=backend)
    assert (ours.bias is None) == (theirs.bias is None)
    assert (ours.weight is None) == (theirs.weight is None)
    g = np.random.default_rng(3)
    x, dy = g.standard_normal(shape) * 2 + 1, g.standard_normal(shape)
    run_both(ours, theirs, x, dy)


@pytest.mark.parametrize("track", [False, True])
@pytest.mark.parametrize("cls,shape", [("InstanceNorm1d", (4, 7)),
                                       ("InstanceNorm2d", (4, 3, 5)),
                                       ("InstanceNorm3d", (4, 2, 3, 3))], ids=str)
def test_unbatched_instance_norm(cls, shape, track, backend):
    ours, theirs = pair(cls, 4, affine=True, track_running_stats=track, backend=backend)
    g = np.random.default_rng(5)
    for step in range(2):          # twice: running statistics accumulate the same way
        x, dy = g.standard_normal(shape) * 3 - 1, g.standard_normal(shape)
        run_both(ours, theirs, x, dy)
    if track:                      # eval mode: the running statistics normalize
        ours.eval()
        theirs.eval()
        x, dy = g.standard_normal(shape), g.standard_normal(shape)
        run_both(ours, theirs, x, dy)


def test_generic_instance_norm_reads_2d_as_unbatched(backend):
    ours = nn.InstanceNorm(4, affine=True, dtype=np.float64, backend=backend)
    theirs = torch.nn.InstanceNorm1d(4, affine=True, dtype=torch.float64)
    x = np.random.default_rng(6).standard_normal((4, 9))
    run_both(ours, theirs, x, np.ones_like(x))
    with pytest.raises(ValueError, match=r"grad_output must have the input's shape \(4, 9\)"):
        ours.backward(np.ones((1, 4, 9)))


@pytest.mark.parametrize("cls,shape", [("InstanceNorm1d", (2, 4, 5, 6)),
                                       ("InstanceNorm2d", (4, 5)),
                                       ("InstanceNorm3d", (4, 5, 6))], ids=str)
def test_instance_norm_rank_errors_as_torch(cls, shape):
    with pytest.raises(ValueError):
        getattr(torch.nn, cls)(4)(torch.zeros(shape))
    with pytest.raises(ValueError, match=f"{cls} expects"):
        getattr(nn, cls)(4)(np.zeros(shape))
