"""reacgan-jax: class-conditional GANs (ReACGAN, ACGAN, SNGAN, BigGAN, StyleGAN2) in JAX/Flax.

Importing the package keeps freed host memory in the heap on a CPU-only host before jax starts
(platform/heap.py: XLA:CPU's per-call buffers otherwise page-fault on every call).
"""

from reacgan_jax.platform import heap as _heap

_heap.keep_freed_memory()
