"""Training speed when another process keeps the CPU busy, with torch's fixed threads and with distill's choice.

torch starts one OpenMP thread per core. Beside another busy process, the thread that shares its core
with it holds up every barrier of a step. distill's trainer (``distill.threads.CpuShare``) keeps torch's
threads to the cores the other processes leave free and looks again every few seconds. This script
times a 2 x 128 BERT student's training steps (batch 32, 48 tokens, random ids) quiet and beside a
competitor (a busy single-threaded loop, or a second training), with torch's own thread count and with
distill's, and prints steps per second and the share of the quiet speed. ``GOMP_SPINCOUNT=10000`` is
set as the ``distill`` command sets it.

    python benchmarks/shared_cpu.py --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

STEP = """
import json, time, torch
from transformers import BertConfig, BertForSequenceClassification
from distill.threads import CpuShare
torch.manual_seed(0)
model = BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=512, num_labels=20))
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
ids = torch.randint(1000, 30000, (32, 48)); labels = torch.randint(0, 20, (32,))
share = CpuShare() if {governed} else None
if share: share.apply()
for _ in range(5):
    model(input_ids=ids, labels=labels).loss.backward(); optimizer.step(); optimizer.zero_grad()
start, threads = time.perf_counter(), []
for _ in range({steps}):
    if share: share.maybe_apply()
    threads.append(torch.get_num_threads())
    model(input_ids=ids, labels=labels).loss.backward(); optimizer.step(); optimizer.zero_grad()
print(json.dumps({{"steps_per_s": {steps} / (time.perf_counter() - start), "threads": sorted(set(threads))}}))
"""
BUSY = "while True: pass"


def run(steps: int, governed: bool, competitor: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["GOMP_SPINCOUNT"] = "10000"
    busy = None
    if competitor == "busy loop":
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
    elif competitor == "second training":
        busy = subprocess.Popen([sys.executable, "-c", STEP.format(steps=steps * 10, governed=governed)], env=env,
                                stdout=subprocess.DEVNULL)
    try:
        if busy is not None:
            time.sleep(2)  # the competitor is up and busy before the clock starts
        done = subprocess.run([sys.executable, "-c", STEP.format(steps=steps, governed=governed)], env=env,
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    print(f"{len(os.sched_getaffinity(0))} CPUs; steps/s of a 2 x 128 student (batch 32 x 48 tokens), "
          f"{args.steps} steps")
    for governed, name in ((False, "torch's threads (one per core)"), (True, "distill's choice (CpuShare)")):
        quiet = run(args.steps, governed, None)
        print(f"  {name}: quiet {quiet['steps_per_s']:5.1f} steps/s (threads {quiet['threads']})")
        for competitor in ("busy loop", "second training"):
            shared = run(args.steps, governed, competitor)
            print(f"    beside a {competitor:>15}: {shared['steps_per_s']:5.1f} steps/s, "
                  f"{shared['steps_per_s'] / quiet['steps_per_s']:4.0%} of quiet (threads {shared['threads']})")
            time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
