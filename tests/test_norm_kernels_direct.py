"""Stress tests of the Cython normalization kernels: direct backend-op calls with bad
arguments raise ValueError/TypeError and never crash.  The cases run in a child process
(this file run as a script with ``--direct``) so that a crash is a failing test, not a
dead test run.

Everything here must run in well under a minute on 2 cores.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

cy = pytest.importorskip("fastdl._backends.cython")


# ---------------------------------------------------------------- direct backend-op calls

def _direct_cases():
    """name -> zero-argument callable that calls a Cython backend op with a bad argument."""
    import fastdl._backends.cython as c
    x = np.ones((4, 8))
    x[:, ::2] = 2.0
    dy = np.ones((4, 8))
    m, r = np.zeros(4), np.ones(4)
    x3 = np.ones((2, 4, 8))
    x3[..., ::2] = 2
    x3l = np.ones((2, 4, 40))       # per-channel batch path (40 * 8 >= 256 bytes)
    x3l[..., ::2] = 2
    e = np.empty_like
    wide = np.empty((4, 16))
    return {
        "ln_fwd_w_len": lambda: c.layer_norm_fwd(x, np.ones(7), None, 1e-5, e(x)),
        "ln_fwd_b_len": lambda: c.layer_norm_fwd(x, None, np.ones(9), 1e-5, e(x)),
        "ln_fwd_w_2d": lambda: c.layer_norm_fwd(x, np.ones((1, 8)), None, 1e-5, e(x)),
        "ln_fwd_out_noncontig": lambda: c.layer_norm_fwd(x, None, None, 1e-5, wide[:, ::2]),
        "ln_fwd_out_fortran": lambda: c.layer_norm_fwd(x, None, None, 1e-5,
                                                       np.empty((4, 8), order="F")),
        "ln_fwd_out_dtype": lambda: c.layer_norm_fwd(x, None, None, 1e-5, e(x, np.float32)),
        "ln_fwd_out_shape": lambda: c.layer_norm_fwd(x, None, None, 1e-5, np.empty((4, 9))),
        "ln_fwd_out_readonly": lambda: c.layer_norm_fwd(
            x, None, None, 1e-5, np.lib.stride_tricks.as_strided(e(x), writeable=False)),
        "ln_fwd_out_list": lambda: c.layer_norm_fwd(x, None, None, 1e-5, [[0.0] * 8] * 4),
        "ln_fwd_x_1d": lambda: c.layer_norm_fwd(np.ones(8), None, None, 1e-5, np.empty(8)),
        "ln_fwd_x_int": lambda: c.layer_norm_fwd(np.ones((4, 8), int), None, None, 1e-5, e(x)),
        "ln_fwd_x_list": lambda: c.layer_norm_fwd([[1.0, 2.0]], None, None, 1e-5,
                                                  np.empty((1, 2))),
        "ln_fwd_x_None": lambda: c.layer_norm_fwd(None, None, None, 1e-5, e(x)),
        "ln_fwd_eps_None": lambda: c.layer_norm_fwd(x, None, None, None, e(x)),
        "ln_fwd_w_list_len": lambda: c.layer_norm_fwd(x, [1.0] * 7, None, 1e-5, e(x)),
        "ln_fwd_empty_rows": lambda: c.layer_norm_fwd(np.empty((3, 0)), None, None, 1e-5, None),
        "rms_fwd_empty": lambda: c.rms_norm_fwd(np.empty((0, 4)), None, 1e-5, None),
        "gn_fwd_empty_channels": lambda: c.group_norm_fwd(np.empty((2, 0, 3)), 1, None, None,
                                                          1e-5, None),
        "gn_fwd_empty_spatial": lambda: c.group_norm_fwd(np.empty((2, 4, 0)), 2, None, None,
                                                         1e-5, None),
        "bn_fwd_empty": lambda: c.batch_norm_fwd(np.empty((0, 4, 8)), None, None, 1e-5, None),
        "ln_bwd_mean_len": lambda: c.layer_norm_bwd(dy, x, np.zeros(3), r, None, True, True),
        "ln_bwd_rstd_len": lambda: c.layer_norm_bwd(dy, x, m, np.ones(5), None, True, True),
        "ln_bwd_dy_shape": lambda: c.layer_norm_bwd(np.ones((4, 7)), x, m, r, None, True, True),
        "ln_bwd_w_len": lambda: c.layer_norm_bwd(dy, x, m, r, np.ones(3), True, True),
        "ln_bwd_mean_None": lambda: c.layer_norm_bwd(dy, x, None, r, None, True, True),
        "ln_bwd_rstd_None": lambda: c.layer_norm_bwd(dy, x, m, None, None, True, True),
        "ln_bwd_dy_None": lambda: c.layer_norm_bwd(None, x, m, r, None, True, True),
        "rms_fwd_w_len": lambda: c.rms_norm_fwd(x, np.ones(9), 1e-5, e(x)),
        "rms_fwd_out_noncontig": lambda: c.rms_norm_fwd(x, None, 1e-5, wide[:, 1::2]),
        "rms_bwd_rstd_len": lambda: c.rms_norm_bwd(dy, x, np.ones(3), None, True),
        "rms_bwd_rstd_None": lambda: c.rms_norm_bwd(dy, x, None, None, True),
        "rms_bwd_dy_None": lambda: c.rms_norm_bwd(None, x, r, None, True),
        "gn_fwd_G_not_divisor": lambda: c.group_norm_fwd(x3, 3, None, None, 1e-5, e(x3)),
        "gn_fwd_G_0": lambda: c.group_norm_fwd(x3, 0, None, None, 1e-5, e(x3)),
        "gn_fwd_G_neg": lambda: c.group_norm_fwd(x3, -2, None, None, 1e-5, e(x3)),
        "gn_fwd_x_2d": lambda: c.group_norm_fwd(x, 1, None, None, 1e-5, e(x)),
        "gn_fwd_w_len": lambda: c.group_norm_fwd(x3, 2, np.ones(8), None, 1e-5, e(x3)),
        "gn_fwd_out_noncontig": lambda: c.group_norm_fwd(x3, 2, None, None, 1e-5,
                                                         np.empty((2, 4, 16))[..., ::2]),
        "gn_bwd_mean_shape": lambda: c.group_norm_bwd(x3, x3, np.zeros(3), np.ones(4), 2, None,
                                                      True, True),
        "gn_bwd_mean_None": lambda: c.group_norm_bwd(x3, x3, None, np.ones(4), 2, None,
                                                     True, True),
        "gn_bwd_rstd_None": lambda: c.group_norm_bwd(x3, x3, np.zeros(4), None, 2, None,
                                                     True, True),
        "gn_bwd_dy_None": lambda: c.group_norm_bwd(None, x3, np.zeros(4), np.ones(4), 2, None,
                                                   True, True),
        "bn_fwd_w_len": lambda: c.batch_norm_fwd(x3, np.ones(3), None, 1e-5, e(x3)),
        "bn_fwd_b_len": lambda: c.batch_norm_fwd(x3l, None, np.ones(5), 1e-5, e(x3l)),
        "bn_fwd_out_noncontig": lambda: c.batch_norm_fwd(x3, None, None, 1e-5,
                                                         np.empty((2, 8, 8))[:, ::2]),
        "bn_eval_mean_len": lambda: c.batch_norm_eval(x3, np.zeros(3), np.ones(4), None, None,
                                                      e(x3)),
        "bn_eval_mean_None_cols": lambda: c.batch_norm_eval(x3, None, np.ones(4), None, None,
                                                            e(x3)),
        "bn_eval_mean_None_chan": lambda: c.batch_norm_eval(x3l, None, np.ones(4), None, None,
                                                            e(x3l)),
        "bn_eval_rstd_None_chan": lambda: c.batch_norm_eval(x3l, np.zeros(4), None, None, None,
                                                            e(x3l)),
        "bn_bwd_mean_None_chan": lambda: c.batch_norm_bwd(x3l, x3l, None, np.ones(4), None, True,
                                                          True, True),
        "bn_bwd_rstd_None_cols": lambda: c.batch_norm_bwd(x3, x3, np.zeros(4), None, None, True,
                                                          True, True),
        "bn_bwd_dy_None_chan": lambda: c.batch_norm_bwd(None, x3l, np.zeros(4), np.ones(4), None,
                                                        True, True, True),
        "bn_bwd_dy_shape": lambda: c.batch_norm_bwd(np.ones((2, 4, 7)), x3, np.zeros(4),
                                                    np.ones(4), None, True, True, True),
        "bn_bwd_w_len": lambda: c.batch_norm_bwd(x3l, x3l, np.zeros(4), np.ones(4), np.ones(5),
                                                 True, True, True),
    }


def _run_direct(names):
    """Child process: run each case, one JSON line per case (started / outcome)."""
    cases = _direct_cases()
    for name in names:
        print(json.dumps({"start": name}), flush=True)
        try:
            cases[name]()
            res = {"name": name, "outcome": "returned"}
        except Exception as exc:   # noqa: BLE001
            res = {"name": name, "outcome": "raised", "type": type(exc).__name__,
                   "msg": str(exc)[:200]}
        print(json.dumps(res), flush=True)


DIRECT_NAMES = list(_direct_cases()) if cy is not None else []


@pytest.fixture(scope="module")
def direct_results():
    """Outcome of every direct case, run in child processes; a child that dies marks the
    case it was running as crashed and the rest run in a fresh child."""
    here = os.path.abspath(__file__)
    root = os.path.dirname(os.path.dirname(here))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FASTDL_NUM_THREADS="2")
    todo, results = list(DIRECT_NAMES), {}
    while todo:
        proc = subprocess.run([sys.executable, "-X", "faulthandler", here, "--direct"] + todo,
                              capture_output=True, text=True, timeout=120, env=env, cwd=root)
        started = None
        for line in proc.stdout.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "start" in rec:
                started = rec["start"]
            else:
                results[rec["name"]] = rec
                started = None
        if started is not None:      # the child died inside this case
            results[started] = {"name": started, "outcome": "crashed",
                                "rc": proc.returncode, "stderr": proc.stderr[-600:]}
        elif proc.returncode != 0 and len(results) < len(DIRECT_NAMES):
            raise RuntimeError(f"direct-case child failed: {proc.stderr[-2000:]}")
        todo = [n for n in todo if n not in results]
    return results


@pytest.mark.parametrize("name", DIRECT_NAMES)
def test_direct_op_bad_arguments_raise(name, direct_results):
    res = direct_results[name]
    assert res["outcome"] != "crashed", \
        f"{name}: the process died (rc={res.get('rc')}):\n{res.get('stderr')}"
    assert res["outcome"] == "raised", f"{name}: returned instead of raising"
    assert res["type"] in ("ValueError", "TypeError"), \
        f"{name}: raised {res['type']}: {res['msg']}"


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--direct":
    _run_direct(sys.argv[2:])
