"""The TFLite op-lowering registry: a leaf module that every file under `ops/` imports.

A lowering is a function `(Lowering, onnx node) -> None` registered for an ONNX op type with `@lowers`;
an int8 form tried first is registered with `@lowers_int8` (so are the integer-only graph's integer forms of
Cast and Div, `ops/integer.py`: tried first, they decline float nodes). This module imports nothing of the backend,
so an op file can import it without importing the lowering (no import cycle), and adding an op is one
new file under `ops/`, found by `lowering.import_op_lowerings()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from edgecompress.errors import InternalError

if TYPE_CHECKING:
    import onnx

    from edgecompress.backends.tflite.lowering import Lowering

MS_DOMAIN = "com.microsoft"

Lowerer = Callable[["Lowering", "onnx.NodeProto"], None]
LOWERINGS: dict[tuple[str, str], Lowerer] = {}


# Int8 forms tried before the float lowering: (lowering, node) -> True when the node was written in int8.
Int8Lowerer = Callable[["Lowering", "onnx.NodeProto"], bool]
INT8_LOWERINGS: dict[tuple[str, str], Int8Lowerer] = {}


def lowers(*op_types: str, domain: str = ""):
    """Decorator: the function writes the builtins for nodes of `op_types` in `domain`."""
    return _registering(LOWERINGS, "TFLite lowerings", op_types, domain)


def lowers_int8(*op_types: str, domain: str = ""):
    """Decorator: the function writes nodes of `op_types` as int8 builtins when their QDQ context allows
    (see `ops/static_int8.py`) and returns False, leaving them to the float lowering, when it does not."""
    return _registering(INT8_LOWERINGS, "int8 TFLite lowerings", op_types, domain)


def _registering(table: dict, what: str, op_types: tuple[str, ...], domain: str):
    def wrap(lower):
        for op_type in op_types:
            if (domain, op_type) in table:
                raise InternalError(f"two {what} for {domain or 'ai.onnx'}::{op_type}")
            table[(domain, op_type)] = lower
        return lower

    return wrap
