"""The enumerations shared with the C++ kernels, defined once here and mirrored once in
csrc/common/score.h and csrc/common/dtype.h (tests/test_dispatch.py checks that both agree).

A new union type is: a code here, its enumerator and a branch of FD_UNION_SWITCH in score.h, its
unit term in each backend (cpu/score_cpu.cpp add_union_term, the CUDA union kernel, torch_backend)
and its reference in tests/reference.py.
"""

from __future__ import annotations

import torch

UNION_CODES = {"global": 0, "netdissect": 1, "lite": 2}
UNION_MODES = tuple(UNION_CODES)
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
FLOAT_DTYPES = tuple(DTYPE_CODES)
BACKENDS = ("auto", "cpu", "torch", "cuda", "cuda_emu")
GPU_BACKENDS = ("cuda", "cuda_emu")  # the CUDA kernels, on a GPU or emulated on the CPU
# Branches of the CPU score kernel's mask construction, in the order of ScoreBranch (csrc/common/score.h).
SCORE_BRANCHES = ("cold_map", "no_hot_source", "block_off", "block_on", "row_off", "row_on", "row_crossing",
                  "row_exact", "exhaustive_map")
