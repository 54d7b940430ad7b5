"""The MLS external sender a fake DAVE voice gateway plays (RFC 9420, ciphersuite 2, P-256).

In a DAVE call the voice server is an MLS *external sender*: it announces its signature key
(op 25), proposes adding and removing members (op 27), and forwards each winning commit and
welcome (ops 29/30) after splitting the client's op 28 body. This module builds exactly those
bytes with nothing but ``cryptography``, so the fake server does not rely on the MLS stack it is
testing (davey's openmls, libdave's mlspp). It knows only the few structures DAVE needs:

* ``ExternalSender`` — op 25 package; external Add/Remove proposals as PublicMessages signed
  with ``SignWithLabel("FramedContentTBS")`` (RFC 9420 §6.1, §5.1.2), sender type external,
  sender index 0, no membership tag.
* `proposals_append` / `proposals_revoke` — op 27 bodies; `proposal_ref` — the RFC 9420 §5.2
  ProposalRef used to revoke a proposal.
* `split_commit_welcome` — op 28 is ``commit MLSMessage || optional bare Welcome`` with no length
  in between, so the commit has to be walked field by field to find where it ends.

Wire encoding (RFC 9420 §2.1.2): vectors carry a QUIC-style variable-length size prefix
(`encode_varint`); integers are big-endian.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "ExternalSender",
    "MLSDecodeError",
    "decode_varint",
    "encode_varint",
    "opaque",
    "proposal_ref",
    "proposals_append",
    "proposals_revoke",
    "split_commit_welcome",
]

PROTOCOL_MLS10: Final = 1
WIRE_FORMAT_PUBLIC_MESSAGE: Final = 1
SENDER_MEMBER: Final = 1
SENDER_EXTERNAL: Final = 2
SENDER_NEW_MEMBER_PROPOSAL: Final = 3
SENDER_NEW_MEMBER_COMMIT: Final = 4
CONTENT_PROPOSAL: Final = 2
CONTENT_COMMIT: Final = 3
PROPOSAL_ADD: Final = 1
PROPOSAL_REMOVE: Final = 3
CREDENTIAL_BASIC: Final = 1
CREDENTIAL_X509: Final = 2
LEAF_SOURCE_KEY_PACKAGE: Final = 1
LEAF_SOURCE_UPDATE: Final = 2
LEAF_SOURCE_COMMIT: Final = 3

#: Largest value a varint can carry (30 bits; the 0b11 prefix is reserved).
VARINT_MAX: Final = (1 << 30) - 1

_OP27_APPEND: Final = 0
_OP27_REVOKE: Final = 1


class MLSDecodeError(ValueError):
    """MLS bytes could not be parsed (truncated, bad varint, unexpected type)."""


def encode_varint(value: int) -> bytes:
    """Encode ``value`` (0..2**30-1) in the shortest RFC 9420 variable-length form."""
    if not 0 <= value <= VARINT_MAX:
        raise ValueError(f"mls varint out of range: {value}")
    if value < 0x40:
        return bytes([value])
    if value < 0x4000:
        return struct.pack(">H", 0x4000 | value)
    return struct.pack(">I", 0x8000_0000 | value)


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode the varint at ``offset``; return ``(value, offset after it)``.

    Raises:
        MLSDecodeError: truncated input, the reserved 0b11 prefix, or a non-minimal encoding
            (RFC 9420 requires the shortest form).
    """
    if offset >= len(data):
        raise MLSDecodeError(f"mls varint: no byte at offset {offset}")
    prefix = data[offset] >> 6
    if prefix == 3:
        raise MLSDecodeError(f"mls varint: reserved prefix 0b11 at offset {offset}")
    size = 1 << prefix
    if offset + size > len(data):
        raise MLSDecodeError(f"mls varint: {size}-byte varint truncated at offset {offset}")
    value = int.from_bytes(data[offset : offset + size], "big") & ((1 << (8 * size - 2)) - 1)
    if size > 1 and value < (1 << (8 * (size // 2) - 2)):
        raise MLSDecodeError(f"mls varint: non-minimal encoding at offset {offset}")
    return value, offset + size


def opaque(data: bytes) -> bytes:
    """Encode ``data`` as an MLS variable-size vector (``opaque data<V>``)."""
    return encode_varint(len(data)) + data


class _Reader:
    """A bounds-checked cursor over MLS bytes; every read failure is an `MLSDecodeError`."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.offset = offset

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise MLSDecodeError(
                f"mls: {what} needs {size} bytes at offset {self.offset}, "
                f"only {len(self.data) - self.offset} left"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, what: str) -> bytes:
        try:
            size, self.offset = decode_varint(self.data, self.offset)
        except MLSDecodeError as exc:
            raise MLSDecodeError(f"mls: length of {what}: {exc}") from None
        return self.take(size, what)


class ExternalSender:
    """The server's MLS identity: a P-256 signing key plus a basic credential.

    Each instance generates a fresh key. Proposals it signs are accepted by members that
    were given `package` (op 25) and are in group ``channel_id`` at ``epoch``.
    """

    def __init__(self, identity: bytes = b"\x00") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        #: The 65-byte uncompressed public key, as MLS carries it.
        self.public_key: bytes = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        #: The basic credential's identity (Discord sends a single zero byte).
        self.identity = bytes(identity)

    def __repr__(self) -> str:
        return f"ExternalSender(public_key={self.public_key[:4].hex()}...)"

    def package(self) -> bytes:
        """The op 25 body: ``ExternalSender { signature_key<V>; Credential credential }``."""
        return opaque(self.public_key) + struct.pack(">H", CREDENTIAL_BASIC) + opaque(self.identity)

    def propose_add(self, channel_id: int, epoch: int, key_package: bytes) -> bytes:
        """An MLSMessage carrying an external Add of ``key_package`` (an op 26 body)."""
        return self._proposal(channel_id, epoch, struct.pack(">H", PROPOSAL_ADD) + key_package)

    def propose_remove(self, channel_id: int, epoch: int, leaf_index: int) -> bytes:
        """An MLSMessage carrying an external Remove of the member at ``leaf_index``."""
        return self._proposal(channel_id, epoch, struct.pack(">HI", PROPOSAL_REMOVE, leaf_index))

    def sign_with_label(self, label: bytes, content: bytes) -> bytes:
        """RFC 9420 §5.1.2 SignWithLabel: ECDSA-P256-SHA256 (DER) over ``SignContent``."""
        sign_content = opaque(b"MLS 1.0 " + label) + opaque(content)
        return self._key.sign(sign_content, ec.ECDSA(hashes.SHA256()))

    def _proposal(self, channel_id: int, epoch: int, proposal: bytes) -> bytes:
        # FramedContent: group_id<V>, epoch u64, Sender{external, index 0}, authenticated_data<V>,
        # content_type, Proposal. The DAVE group id is the channel id as 8 big-endian bytes.
        framed = (
            opaque(struct.pack(">Q", channel_id))
            + struct.pack(">QBI", epoch, SENDER_EXTERNAL, 0)
            + opaque(b"")
            + bytes([CONTENT_PROPOSAL])
            + proposal
        )
        head = struct.pack(">HH", PROTOCOL_MLS10, WIRE_FORMAT_PUBLIC_MESSAGE)
        # FramedContentTBS = version, wire_format, FramedContent (no GroupContext for an
        # external sender); the PublicMessage then carries only the signature.
        signature = self.sign_with_label(b"FramedContentTBS", head + framed)
        return head + framed + opaque(signature)


def proposals_append(messages: list[bytes]) -> bytes:
    """The op 27 body that appends ``messages`` (MLSMessage proposals)."""
    return bytes([_OP27_APPEND]) + opaque(b"".join(messages))


def proposals_revoke(refs: list[bytes]) -> bytes:
    """The op 27 body that revokes proposals by ``refs`` (each as `proposal_ref` returns)."""
    return bytes([_OP27_REVOKE]) + opaque(b"".join(refs))


def proposal_ref(message: bytes) -> bytes:
    """The encoded ProposalRef (``opaque<V>`` of RefHash) of a proposal MLSMessage.

    RFC 9420 §5.2: ``RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent)``, where the
    AuthenticatedContent is the MLSMessage without its 2-byte version (wire_format onwards).
    """
    hash_input = opaque(b"MLS 1.0 Proposal Reference") + opaque(message[2:])
    return opaque(hashlib.sha256(hash_input).digest())


def _skip_credential(reader: _Reader) -> None:
    kind = reader.uint(2, "credential type")
    if kind == CREDENTIAL_BASIC:
        reader.vector("basic identity")
    elif kind == CREDENTIAL_X509:
        reader.vector("x509 certificates")
    else:
        raise MLSDecodeError(f"mls: unknown credential type {kind}")


def _skip_leaf_node(reader: _Reader) -> None:
    reader.vector("leaf encryption_key")
    reader.vector("leaf signature_key")
    _skip_credential(reader)
    for part in ("versions", "ciphersuites", "extensions", "proposals", "credentials"):
        reader.vector(f"capabilities.{part}")
    source = reader.uint(1, "leaf_node_source")
    if source == LEAF_SOURCE_KEY_PACKAGE:
        reader.take(16, "lifetime")
    elif source == LEAF_SOURCE_COMMIT:
        reader.vector("parent_hash")
    elif source != LEAF_SOURCE_UPDATE:
        raise MLSDecodeError(f"mls: unknown leaf_node_source {source}")
    reader.vector("leaf extensions")
    reader.vector("leaf signature")


def _optional_present(reader: _Reader, what: str) -> bool:
    flag = reader.uint(1, what)
    if flag > 1:
        raise MLSDecodeError(f"mls: {what} presence byte is {flag}, not 0 or 1")
    return flag == 1


def split_commit_welcome(op28_body: bytes) -> tuple[bytes, bytes | None]:
    """Split an op 28 body into ``(commit MLSMessage, bare Welcome or None)``.

    Walks the PublicMessage: header, FramedContent (a Commit: proposals, optional UpdatePath),
    auth data (signature, confirmation tag) and, for a member sender, the membership tag.

    Raises:
        MLSDecodeError: the body does not start with a well-formed PublicMessage commit.
    """
    reader = _Reader(bytes(op28_body))
    version = reader.uint(2, "version")
    wire_format = reader.uint(2, "wire_format")
    if version != PROTOCOL_MLS10 or wire_format != WIRE_FORMAT_PUBLIC_MESSAGE:
        raise MLSDecodeError(
            f"mls: op 28 must start with an MLS 1.0 PublicMessage, got version {version} "
            f"wire_format {wire_format}"
        )
    reader.vector("group_id")
    reader.take(8, "epoch")
    sender_type = reader.uint(1, "sender_type")
    if sender_type in (SENDER_MEMBER, SENDER_EXTERNAL):
        reader.take(4, "sender index")
    elif sender_type not in (SENDER_NEW_MEMBER_PROPOSAL, SENDER_NEW_MEMBER_COMMIT):
        raise MLSDecodeError(f"mls: unknown sender_type {sender_type}")
    reader.vector("authenticated_data")
    content_type = reader.uint(1, "content_type")
    if content_type != CONTENT_COMMIT:
        raise MLSDecodeError(f"mls: op 28 content_type is {content_type}, not commit (3)")
    reader.vector("commit proposals")
    if _optional_present(reader, "update path"):
        _skip_leaf_node(reader)
        reader.vector("update path nodes")
    reader.vector("signature")
    reader.vector("confirmation_tag")
    if sender_type == SENDER_MEMBER:
        reader.vector("membership_tag")
    end = reader.offset
    welcome = op28_body[end:]
    return bytes(op28_body[:end]), (bytes(welcome) if welcome else None)
