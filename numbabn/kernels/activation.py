"""CPU kernels of the activations of :mod:`numbabn.hf`, on flat C-contiguous
NumPy arrays (CuPy arrays take the array-expression path in ``hf.layers``).

One pass instead of the half-dozen temporaries of the NumPy expression.
Serial: at the batch sizes of ``hf`` waking a thread pool would cost more than
it saves.
"""

from numba import njit

from .cpu import _OPTIONS, FASTMATH


@njit(fastmath=FASTMATH, **_OPTIONS)
def tanh_rop_backward(z, df, dg, da, g, out):
    """``out = f'*dg + f''*da*g`` for ``z = tanh(a)``: ``f' = df = 1 - z**2`` and
    ``f'' = -2*z*f'``. Every argument is a flat array of one length."""
    for i in range(out.size):
        out[i] = df[i] * (dg[i] - 2.0 * z[i] * da[i] * g[i])
