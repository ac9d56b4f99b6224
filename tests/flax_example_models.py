"""A user's own Flax models, for the launcher test (importable as ``flax_example_models``)."""

import jax.numpy as jnp
from flax import nnx


class SmallCNN(nnx.Module):
  """Conv -> BatchNorm -> ReLU -> max-pool -> Linear, as a user would write it."""

  def __init__(self, features: int = 8, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, features, kernel_size=(3, 3), strides=(2, 2), rngs=rngs)
    self.bn = nnx.BatchNorm(features, rngs=rngs)
    self.head = nnx.Linear(features * 7 * 7, 10, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.bn(self.conv(x)))
    h = nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2))
    return self.head(h.reshape((h.shape[0], -1)))
