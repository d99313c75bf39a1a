"""The sans-IO wire protocol: message types, encoding, decoding and validation, one framing
for requests, replies and the replication stream."""

from zps.protocol.fields import DEFAULT_LIMITS, DecodeError, Limits, frame_sizes
from zps.protocol.framing import (
    RequestEncoder,
    decode_reply,
    decode_reply_header,
    decode_request,
    encode_reply,
    encode_request,
)
from zps.protocol.messages import (
    DTYPES,
    PART_DTYPES,
    PROTOCOL_VERSION,
    REPLY_DTYPES,
    ROW_OPS,
    UPDATE_OPS,
    Beat,
    ClientRequest,
    EncodedMeta,
    Op,
    Replicated,
    Reply,
    Request,
    TensorMeta,
    as_array,
)
from zps.protocol.stream import BEAT, CHANGE, decode_stream, encode_beat, encode_change

__all__ = [
    "BEAT",
    "CHANGE",
    "DEFAULT_LIMITS",
    "DTYPES",
    "PART_DTYPES",
    "PROTOCOL_VERSION",
    "REPLY_DTYPES",
    "ROW_OPS",
    "UPDATE_OPS",
    "Beat",
    "ClientRequest",
    "DecodeError",
    "EncodedMeta",
    "Limits",
    "Op",
    "Replicated",
    "Reply",
    "Request",
    "RequestEncoder",
    "TensorMeta",
    "as_array",
    "decode_reply",
    "decode_reply_header",
    "decode_request",
    "decode_stream",
    "encode_beat",
    "encode_change",
    "encode_reply",
    "encode_request",
    "frame_sizes",
]
