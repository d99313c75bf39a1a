"""The one exception the codecs raise for bad input, whether it came from a user or the wire."""

from __future__ import annotations

from zps.errors import ProtocolError


class CodecError(ProtocolError, ValueError):
    """A codec spec, a header's codec params, or a compressed tensor's buffers are wrong.

    ``code`` is ``"bad_header"`` for a bad spec or params and ``"bad_frames"`` for bad
    buffers. It is a ``ProtocolError`` so a server answers it like any malformed request,
    and a ``ValueError`` so user code that configured a codec can catch it as one.
    """
