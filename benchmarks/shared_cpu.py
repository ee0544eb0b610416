"""Training speed when another process shares the CPU, with and without passive OpenMP waiting.

Two torch processes that each use every core oversubscribe the machine; OpenMP threads that spin
while they wait for work then steal the other process's cores, and both slow down far more than
two-fold. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep instead. This script times a
2 x 128 BERT student's training steps (batch 32, 48 tokens, random ids): alone, and two processes
at once, under each setting (the default, passive waiting, a short spin), and prints steps per second.

    python benchmarks/shared_cpu.py --steps 60
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
torch.manual_seed(0)
model = BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=512, num_labels=20))
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
ids = torch.randint(1000, 30000, (32, 48)); labels = torch.randint(0, 20, (32,))
for _ in range(5):
    model(input_ids=ids, labels=labels).loss.backward(); optimizer.step(); optimizer.zero_grad()
start = time.perf_counter()
for _ in range({steps}):
    model(input_ids=ids, labels=labels).loss.backward(); optimizer.step(); optimizer.zero_grad()
print(json.dumps({{"steps_per_s": {steps} / (time.perf_counter() - start), "threads": torch.get_num_threads()}}))
"""


def run(processes: int, setting: dict[str, str], steps: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(setting)
    procs = [subprocess.Popen([sys.executable, "-c", STEP.format(steps=steps)], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(processes)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1])["steps_per_s"] for p in procs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--spincounts", nargs="*", default=["10000", "1000"], help="GOMP_SPINCOUNT values to try")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; steps/s of a 2 x 128 student (batch 32 x 48 tokens)")
    for setting in ({}, {"OMP_WAIT_POLICY": "PASSIVE"}, *({"GOMP_SPINCOUNT": n} for n in args.spincounts)):
        alone = run(1, setting, args.steps)[0]
        shared = run(2, setting, args.steps)
        name = " ".join(f"{k}={v}" for k, v in setting.items()) or "default (threads spin while they wait)"
        print(f"  {name:>40}: alone {alone:5.1f}  two at once {shared[0]:5.1f} + {shared[1]:5.1f}")
        time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
