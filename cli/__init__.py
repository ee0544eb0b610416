"""The ``distill`` command line (``cli.main``).

Set before anything imports torch: OpenMP threads that spin while they wait for work steal the
cores of any other busy process, and training collapses when the machine is shared. A short spin
keeps the speed alone and removes most of the collapse (``benchmarks/shared_cpu.py``, 2 cores: a
2 x 128 student's training steps alone 14.4 -> 14.5 per second, two at once 1.8 -> 5.4 each; fully
passive waiting, ``OMP_WAIT_POLICY=PASSIVE``, gives 8.4 each when shared but costs ~20 % alone).
A value the user set wins.
"""

import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
