"""Networks: pure init/apply functions."""

from jaxbio.nets import layers
from jaxbio.nets.sequential import (Block, Network, block_apply, convnet, mlp, num_params,
                                    sequential)

__all__ = ["layers", "Block", "Network", "block_apply", "convnet", "mlp", "num_params",
           "sequential"]
