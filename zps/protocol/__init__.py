"""The sans-IO wire protocol: message types, encoding, decoding and validation."""

from zps.protocol.framing import (
    DEFAULT_LIMITS,
    DecodeError,
    Limits,
    decode_reply,
    decode_reply_header,
    decode_request,
    encode_reply,
    encode_request,
)
from zps.protocol.messages import (
    DTYPES,
    PROTOCOL_VERSION,
    EncodedMeta,
    Op,
    Reply,
    Request,
    TensorMeta,
    as_array,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DTYPES",
    "PROTOCOL_VERSION",
    "DecodeError",
    "EncodedMeta",
    "Limits",
    "Op",
    "Reply",
    "Request",
    "TensorMeta",
    "as_array",
    "decode_reply",
    "decode_reply_header",
    "decode_request",
    "encode_reply",
    "encode_request",
]
