"""PyTorch side of the forecast engine benchmark (driven by bench/forecast.sh).

Loads the weights forecast_bench wrote (--write-weights; parsed with numpy, see
tests/forecast/ref_lstm.py) into torch.nn.LSTM(batch_first=True) + torch.nn.Linear on the last
step, in FP32, and times the forward pass under torch.no_grad() for each batch size: warm-up
calls, then at least --reps timed calls (more until --min-ms have passed); prints the median.
Without --threads it runs on one thread (torch.set_num_threads(1)) and prints
  torch fp32 batch 1 us <median>
--threads takes a comma-separated list of thread counts, times every batch with each (calling
torch.set_num_threads(N) before timing) and says the count in each line:
  torch fp32 batch 32 threads 2 us <median>

usage: forecast_torch.py --weights WEIGHTS.safetensors [--batches 1,32] [--threads 1,2]
                         [--reps 100]
(the weights may also be given as the only positional argument)
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "forecast"))
from ref_lstm import forward, load_model  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("weights_path", nargs="?", metavar="WEIGHTS")
    p.add_argument("--weights", help="the FP32 .safetensors file forecast_bench wrote")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", help="comma-separated thread counts (default: 1, unlabelled)")
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--min-ms", type=float, default=1000)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    weights = args.weights or args.weights_path
    if not weights:
        p.error("give the weights file with --weights")
    labelled = args.threads is not None
    thread_counts = [int(t) for t in args.threads.split(",")] if labelled else [1]
    torch.manual_seed(args.seed)
    lstm, head, shape = load_model(weights)
    print(f"torch version {torch.__version__} threads {','.join(map(str, thread_counts))}")
    batches = [int(b) for b in args.batches.split(",")]
    inputs = {b: torch.randn(b, shape["window"], shape["input_size"]) for b in batches}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        key = f" threads {torch.get_num_threads()}" if labelled else ""
        for batch in batches:
            x = inputs[batch]
            for _ in range(10):
                forward(lstm, head, x)
            times = []
            start = time.perf_counter()
            while len(times) < args.reps or (time.perf_counter() - start) * 1e3 < args.min_ms:
                t0 = time.perf_counter()
                forward(lstm, head, x)
                times.append((time.perf_counter() - t0) * 1e6)
            print(f"torch fp32 batch {batch}{key} us {statistics.median(times):.1f}", flush=True)


if __name__ == "__main__":
    main()
