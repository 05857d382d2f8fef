"""Albatross's wire protocol: messages, DER codec, framing, state file."""

from .codec import decode_cert_extension, decode_wire, encode_cert_extension, encode_wire
from .framing import END, END_CHUNK, FrameReader, frame, read_frame, write_frame
from .messages import *  # noqa: F401,F403
from .messages import Header, Wire, endpoint
from .state import State, decode_state, encode_state

__all__ = [
    "decode_wire", "encode_wire", "decode_cert_extension", "encode_cert_extension",
    "FrameReader", "frame", "read_frame", "write_frame", "END", "END_CHUNK",
    "Header", "Wire", "endpoint", "State", "decode_state", "encode_state",
]
