"""Triton's CPU interpreter, made usable by the tests (tests/conftest.py applies this when TRITON_INTERPRET=1).

Triton 3.6's interpreter turns runtime loop bounds into Python ints with int(<1-element array>), which NumPy >= 2
rejects; take the element explicitly. Only the interpreter is touched, and only in the test process.
"""
from __future__ import annotations


def patch_loop_bounds() -> None:
    try:
        import triton.runtime.interpreter as interpreter
    except ImportError:
        return
    if getattr(interpreter, "_slimkv_index_patch", False):
        return
    patch_tensor = interpreter._patch_lang_tensor

    def patch_tensor_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch_tensor_index
    interpreter._slimkv_index_patch = True
