"""Batch-invariant numerics: a request gives the same bytes alone or batched with others.

On CPU some kernels compute a row differently depending on how many rows travel with it:
oneDNN convolutions pick their algorithm by batch size; BLAS takes another path for a
matrix-vector product than for a matrix product (a [1, C] time embedding vs [6, C]); and a
tensor whose strides look channels-last in a batch but not alone (a size-1 batch hides the
layout) sends group norm to another kernel with another summation order. The differences
are 1e-7 to 1e-5 per step and change PNG bytes. Inside `batch_invariant()` convolutions use
PyTorch's native kernel, which works sample by sample, every linear layer is computed one
sample (leading index) at a time, so each sample's GEMM has the same shape whatever the
batch, and convolutions and group norms get contiguous inputs, so their kernel does not
depend on the batch either. Attention (SDPA) is per-sample already.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

LAYOUT_SENSITIVE = (F.group_norm, F.conv2d)
# On a GPU, cuDNN picks a convolution algorithm by the whole input shape and attention
# kernels split their work by batch x heads: run those one sample at a time there too.
PER_SAMPLE_ON_GPU = (F.conv2d, F.scaled_dot_product_attention)


class BatchInvariantMode(TorchFunctionMode):
    """`F.linear` one sample of the leading dimension at a time; contiguous inputs for the
    kernels that choose their algorithm by memory layout."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and args and args[0].dim() >= 2 and args[0].shape[0] > 1:
            inputs, rest = args[0], args[1:]
            return torch.cat([func(sample, *rest, **kwargs) for sample in inputs.split(1)])
        if func in PER_SAMPLE_ON_GPU and args and args[0].is_cuda and args[0].shape[0] > 1:
            return per_sample(func, args, kwargs)
        if func in LAYOUT_SENSITIVE and args and not args[0].is_contiguous():
            args = (args[0].contiguous(), *args[1:])
        return func(*args, **kwargs)


def per_sample(func, args, kwargs):
    """`func` on each sample: the leading dimension of every batched tensor argument (the
    query, key, value and mask of attention) is sliced alike."""
    count = args[0].shape[0]

    def take(value, index):
        batched = isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == count
        return value[index : index + 1] if batched else value

    return torch.cat(
        [
            func(*(take(a, i) for a in args), **{k: take(v, i) for k, v in kwargs.items()})
            for i in range(count)
        ]
    )


@contextmanager
def batch_invariant(enabled: bool = True) -> Iterator[None]:
    """Within: each sample's result is independent of the batch it runs in (see module doc)."""
    if not enabled:
        yield
        return
    with (
        torch.backends.mkldnn.flags(enabled=False),
        torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True),
        BatchInvariantMode(),
    ):
        yield
