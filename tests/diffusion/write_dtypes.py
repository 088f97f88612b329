"""Writes a safetensors file with one tensor per floating dtype, for the weight loader's test.

usage: write_dtypes.py OUT.safetensors
"""
import sys

import torch

import st_io

base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8 - 0.5
st_io.save(sys.argv[1], {
    "f32": base,
    "f16": base.to(torch.float16),
    "bf16": base.to(torch.bfloat16),
    "i64": torch.arange(5, dtype=torch.int64),
}, metadata={"format": "pt"})
