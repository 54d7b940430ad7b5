"""Small parsers the fake DAVE gateway needs beyond `mls`: who a key package is for, which group
and epoch a commit belongs to, and whether a media frame is a DAVE protocol frame.

Each parser raises `ValueError` (`mls.MLSDecodeError`) with a readable reason on bad input.
"""

from __future__ import annotations

import struct

from discord_voice.testing.dave.mls import MLSDecodeError, decode_varint

__all__ = [
    "SILENCE_FRAME",
    "commit_group_epoch",
    "commit_proposal_refs",
    "is_protocol_frame",
    "key_package_identity",
]

#: The Opus silence frame: the one plaintext frame allowed in a DAVE call.
SILENCE_FRAME = b"\xf8\xff\xfe"
_MAGIC = b"\xfa\xfa"
_MIN_SUPPLEMENTAL = 11  # 8-byte tag + 1-byte nonce + size byte + 2-byte marker


def _skip_vector(data: bytes, offset: int, what: str) -> int:
    size, offset = decode_varint(data, offset)
    if offset + size > len(data):
        raise MLSDecodeError(f"mls: {what} runs past the end ({size} bytes at {offset})")
    return offset + size


def key_package_identity(key_package: bytes) -> bytes:
    """The basic credential identity of a KeyPackage (8 bytes BE user id in DAVE)."""
    data = bytes(key_package)
    if len(data) < 4:
        raise MLSDecodeError("mls: key package shorter than its version and ciphersuite")
    version, suite = struct.unpack_from(">HH", data)
    if version != 1 or suite != 2:
        raise MLSDecodeError(f"mls: key package version {version} ciphersuite {suite}, want 1/2")
    offset = _skip_vector(data, 4, "init_key")
    offset = _skip_vector(data, offset, "encryption_key")
    offset = _skip_vector(data, offset, "signature_key")
    if offset + 2 > len(data):
        raise MLSDecodeError("mls: key package ends before its credential")
    (kind,) = struct.unpack_from(">H", data, offset)
    if kind != 1:
        raise MLSDecodeError(f"mls: key package credential type {kind}, DAVE needs basic (1)")
    size, start = decode_varint(data, offset + 2)
    if start + size > len(data):
        raise MLSDecodeError("mls: credential identity runs past the end")
    return data[start : start + size]


def commit_group_epoch(commit: bytes) -> tuple[int, int]:
    """(group id as an int, epoch) from the FramedContent of a PublicMessage commit."""
    data = bytes(commit)
    if len(data) < 5:
        raise MLSDecodeError("mls: commit shorter than its header")
    size, start = decode_varint(data, 4)
    end = start + size
    if end + 8 > len(data):
        raise MLSDecodeError("mls: commit ends inside group_id or epoch")
    (epoch,) = struct.unpack_from(">Q", data, end)
    return int.from_bytes(data[start:end], "big"), int(epoch)


def commit_proposal_refs(commit: bytes) -> list[bytes]:
    """The encoded ProposalRefs (``opaque<V>``, as `mls.proposal_ref` returns them) a commit
    references; an inline proposal (never valid in DAVE) raises `MLSDecodeError`."""
    data = bytes(commit)
    offset = _skip_vector(data, 4, "group_id") + 8
    if offset >= len(data):
        raise MLSDecodeError("mls: commit ends before its sender")
    sender_type = data[offset]
    offset += 5 if sender_type in (1, 2) else 1
    offset = _skip_vector(data, offset, "authenticated_data")
    if offset >= len(data) or data[offset] != 3:
        raise MLSDecodeError("mls: not a commit (content_type is not 3)")
    size, start = decode_varint(data, offset + 1)
    end = start + size
    if end > len(data):
        raise MLSDecodeError("mls: commit proposals run past the end")
    refs: list[bytes] = []
    offset = start
    while offset < end:
        if data[offset] != 2:
            raise MLSDecodeError(f"mls: commit carries an inline proposal (type {data[offset]})")
        after = _skip_vector(data, offset + 1, "proposal reference")
        if after > end:
            raise MLSDecodeError("mls: proposal reference runs past the proposals vector")
        refs.append(data[offset + 1 : after])
        offset = after
    return refs


def is_protocol_frame(frame: bytes) -> bool:
    """The DAVE protocol frame check: magic marker and a sane supplemental size."""
    if len(frame) < _MIN_SUPPLEMENTAL + 1 or frame[-2:] != _MAGIC:
        return False
    supplemental = frame[-3]
    return _MIN_SUPPLEMENTAL <= supplemental < len(frame)
