"""PyTorch reference for the native LSTM engine (src/forecast/lstm_engine.h).

Loads a model.safetensors written by WriteModelFp32 into torch.nn.LSTM(batch_first=True) and
torch.nn.Linear on the last step, the network lstm_model.h describes, and runs it on raw float32
inputs.

usage: ref_lstm.py MODEL.safetensors INPUTS.f32 BATCH OUTPUTS.f32
  INPUTS.f32 holds BATCH x window x input_size float32 values (little-endian, no header);
  OUTPUTS.f32 receives BATCH x outputs float32 values.
"""
import json
import struct
import sys

import numpy as np
import torch

DTYPES = {"F32": np.float32, "I8": np.int8}


def read_safetensors(path):
    """Returns ({name: numpy array}, metadata dict) without the safetensors package."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    metadata = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, t in header.items():
        begin, end = t["data_offsets"]
        arr = np.frombuffer(data[base + begin:base + end], dtype=DTYPES[t["dtype"]])
        tensors[name] = arr.reshape(t["shape"]).copy()
    return tensors, metadata


def load_model(path):
    """Builds (lstm, head, shape) from an FP32 or INT8 model file (INT8 is dequantized)."""
    tensors, metadata = read_safetensors(path)
    shape = json.loads(metadata["megaserve.forecast"])["shape"]
    lstm = torch.nn.LSTM(shape["input_size"], shape["hidden_size"], shape["num_layers"],
                         batch_first=True)
    head = torch.nn.Linear(shape["hidden_size"], shape["horizon"] * shape["num_quantiles"])
    state = {}
    for name, arr in tensors.items():
        if name.endswith(".scale"):
            continue
        if arr.dtype == np.int8:
            arr = arr.astype(np.float32) * tensors[name + ".scale"][:, None]
        state[name] = torch.from_numpy(arr.astype(np.float32))
    lstm.load_state_dict({k[len("lstm."):]: v for k, v in state.items() if k.startswith("lstm.")})
    head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    lstm.eval()
    head.eval()
    return lstm, head, shape


def forward(lstm, head, x):
    with torch.no_grad():
        out, _ = lstm(x)
        return head(out[:, -1, :])


def main():
    model, inputs, batch, outputs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    lstm, head, shape = load_model(model)
    x = np.fromfile(inputs, dtype=np.float32).reshape(batch, shape["window"],
                                                      shape["input_size"])
    y = forward(lstm, head, torch.from_numpy(x))
    y.numpy().astype(np.float32).tofile(outputs)


if __name__ == "__main__":
    main()
