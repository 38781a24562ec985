"""How many threads a kernel may use, asked from compiled code.

``numba.get_num_threads()`` costs 1 us from Python (a tenth of a small product). Compiled,
``threads_here()`` makes the call Numba's own parallel loops make, and still lets the caller
be cached (``numba.get_num_threads`` compiled directly holds a ctypes pointer, which a cached
function may not).
"""

from __future__ import annotations

import numba
from numba.extending import overload


def threads_here() -> int:
    """``numba.get_num_threads()``: the threads a parallel loop started now would use."""
    return numba.get_num_threads()


@overload(threads_here)
def _ol_threads_here():
    try:  # no ctypes pointer (numba.get_num_threads has one), so cache=True still works
        from numba.np.ufunc.parallel import _iget_num_threads
    except ImportError:  # another Numba: still right, but compiled again in each process
        return lambda: numba.get_num_threads()
    return lambda: _iget_num_threads()
