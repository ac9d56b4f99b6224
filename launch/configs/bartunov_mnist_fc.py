"""Bartunov et al. (2018), MNIST, fully connected: 784 -> 256 x 5 -> softmax 10.

tanh hidden units, Glorot initialisation, Adam with the per-method best
hyperparameters of the paper's Table 5. Batch size is unstated in the paper;
128 is used. The paper reports the best test error within 500 epochs:
BP 1.48 %, FA 1.85 %, DFA 2.75 %.

Usage: ``--config=launch/configs/bartunov_mnist_fc.py:<rule>`` with rule one of
bp, fa, dfa (add ``,runlocal`` for a 1-epoch smoke run).
"""

from launch.configs import common

# Table 5, MNIST-FC: learning rate, beta2, epsilon (beta1 = 0.9).
_ADAM = {"bp": (0.000152, 0.999, 1e-8), "fa": (0.000168, 0.999, 1e-4),
         "dfa": (0.001649, 0.95, 1e-3)}


def get_config(arg: str = "bp"):
  rule, *flags_ = arg.split(",")
  if rule not in _ADAM:
    raise ValueError(f"unknown rule {rule!r} for this config; valid choices: "
                     f"{', '.join(_ADAM)}")
  c = common.base_config()
  c.dataset.name = "mnist"
  c.model.arch = "mlp"
  c.model.widths = (256,) * 5
  c.model.activation = "tanh"
  c.model.kernel_init = "glorot_uniform"
  c.rule.name = rule
  lr, b2, eps = _ADAM[rule]
  c.optimizer.update(dict(name="adam", learning_rate=lr, b1=0.9, b2=b2, eps=eps))
  c.batch_size = 128
  c.num_epochs = 500
  if "runlocal" in flags_:
    c.num_epochs = 1
  return c
