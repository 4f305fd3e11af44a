"""The course's worked answers as the course states them, for ``fastdl demo`` to print
beside the library's values (and for the tests to check the two agree, or that a listed
correction explains why not).  Values are the course's, rounded as the course rounds."""
from __future__ import annotations

import numpy as np

# The normalization exercise: a 4×2×3 tensor (batch of 4, 2 channels, 3 features).
NORM_X = np.array([[[2, 5, 1], [4, 3, 4]],
                   [[1, 2, 4], [1, 2, 2]],
                   [[3, 1, 2], [3, 2, 4]],
                   [[3, 4, 3], [5, 2, 3]]], dtype=np.float64)

# kind -> (means, variances, decimals): the course's tables, biased variances
NORM_STATS = {
    "batch": ([2.583, 2.916], [1.576, 1.243], 3),
    "layer": ([3.167, 2.000, 2.500, 3.333], [1.806, 1.000, 0.917, 0.889], 3),
    "instance": ([[2.667, 3.667], [2.333, 1.667], [2.000, 3.000], [3.333, 3.333]],
                 [[2.889, 0.222], [1.556, 0.222], [0.667, 0.667], [0.222, 1.556]], 3),
}

# The decoding exercise on the tree of shape descriptions ("the red rectangle", ...).
SHAPES_T = 3
GREEDY = ("the red rectangle", -9.7)
BEAM_WIDTH = 2
BEAM = [("a blue square", -9.9), ("a red circle", -10.0)]
# step -> {candidate: joint log-probability}; the kept ones by step
BEAM_CANDIDATES = {
    1: {"the": -1.7, "a": -2.0},
    2: {"the green": -5.3, "the red": -5.0, "a blue": -4.7, "a red": -4.9},
    3: {"a blue ellipse": -10.3, "a blue square": -9.9, "a red circle": -10.0,
        "a red square": -10.2},
}
BEAM_KEPT = {1: {"the", "a"}, 2: {"a blue", "a red"}, 3: {"a blue square", "a red circle"}}

# The exhaustive-search example: a 20 000-word vocabulary, 10 steps, 8-byte floats
TABLE_N, TABLE_T, TABLE_ITEMSIZE = 20_000, 10, 8
TABLE_TB = 8 ** 21
# The beam-search space example: 500 000 words, beam 100, 4-byte scores: 200 MB
SPACE_N, SPACE_B, SPACE_ITEMSIZE, SPACE_MB = 500_000, 100, 4, 200

# The LoRA-or-QLoRA decision table: stage -> condition -> choice
DECISION = {"mha": {"memory limit": "QLoRA", "faster": "LoRA", "both": "QLoRA"},
            "ffn": {"memory limit": "LoRA", "faster": "LoRA", "both": "LoRA"}}


def agrees(course, value, decimals: int) -> bool:
    """Whether ``value`` rounds to the course's ``course`` at ``decimals`` places
    (element-wise for arrays); a truncated value (2.916 for 2.91667) does not."""
    c, v = np.asarray(course, dtype=np.float64), np.asarray(value, dtype=np.float64)
    return c.shape == v.shape and bool(np.all(np.abs(c - v) <= 0.5 * 10.0 ** -decimals + 1e-12))
