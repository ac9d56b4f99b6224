"""Data parallelism: 1 and 8 (fake CPU) devices give the same training result."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = {"batch_size": 32, "model.widths": (16, 16)}
CASES = [
    ("bp", "launch.configs.bartunov", "mnist,fc,bp", SMALL),
    ("fa", "launch.configs.bartunov", "mnist,fc,fa", SMALL),
    ("dfa", "launch.configs.bartunov", "mnist,fc,dfa", SMALL),
    ("kp", "launch.configs.bartunov", "mnist,fc,kp", SMALL),
    ("sign_symmetry", "launch.configs.bartunov", "mnist,fc,sign_symmetry", SMALL),
    ("fa_lc", "launch.configs.bartunov", "mnist,lc,fa",
     {"batch_size": 32, "model.convs": ((4, 3, 2),), "model.dense": (16,)}),
    ("bp_conv_bn", "launch.configs.bartunov", "mnist,conv,bp",
     {"batch_size": 32, "model.convs": ((4, 3, 2),), "model.dense": (16,),
      "model.batch_norm": True, "model.pool": "max_pool:2:2"}),
]


def test_one_and_eight_devices_agree():
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "parallel_check.py"),
                         json.dumps(CASES)], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  results = json.loads(line[len("RESULT "):])
  assert set(results) == {c[0] for c in CASES}
  for name, rel_diff in results.items():
    assert rel_diff < 1e-5, (name, rel_diff)
