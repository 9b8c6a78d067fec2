"""What every record module of the protocol shares: the constrained number types, the error of
a message whose fields do not fit together (`ProtocolError`), and `fit`, the one conversion
from a decoded header (a msgpack map) to its record.

    header (dict) --fit(record type, header, what)--> record, or ProtocolError naming the field

msgspec's own `ValidationError` (a `ValueError`) already names the field (`$.tids[0]`); `fit`
says which message it was and what to do. This module imports nothing of taskmill but
`task.MAX_TIMEOUT`.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec

from ..task import MAX_TIMEOUT

__all__ = ["MAX_TIMEOUT", "NonNeg", "ProtocolError", "Timeout", "fit"]

NonNeg = Annotated[int, msgspec.Meta(ge=0)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT)]

R = TypeVar("R", bound=msgspec.Struct)


class ProtocolError(ValueError):
    """A message whose fields do not fit its record (a missing field, a wrong type, or fields
    of the right types that do not fit together)."""


def fit(record: type[R], header: Any, what: str) -> R:
    """`header` as a `record`; ProtocolError naming `what` and the field that does not fit."""
    try:
        return msgspec.convert(header, record)
    except msgspec.ValidationError as e:
        raise ProtocolError(
            f"{what} does not fit its record {record.__name__}: {e} (client and controller "
            "must run the same taskmill version)") from None
