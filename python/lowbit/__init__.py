"""lowbit: the Python side of lowbit-trt's native kernel library.

- `lowbit.packing`   : the ONE home of every pack/unpack/permutation of quantized tensors.
- `lowbit.reference` : integer-exact torch reference of every kernel (CPU or CUDA). The
                       quantizers, the reference runtime and the kernel tests all use it.
"""

__version__ = "0.1.0"
