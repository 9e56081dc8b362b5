"""Optional message signing (``Config.signing_keys``): HMAC-SHA256 with key rotation.

The first key signs, every key verifies: to rotate, put the new key first, keep the old one until
every message signed with it has run, then drop it. A signature is ``<key id>.<mac>``: the key
id (8 hex digits of a hash of the key, never the key) says which key signed, so a worker tells
"signed with a key I do not have" from "altered after signing" and tries one key, not all.

What a signature covers:

* A task message (``TaskMessage.sig``): the whole message encoded with ``sig=""`` — its name,
  arguments, options and every nested callback and chain link. A worker re-signs each body it
  makes (a retry, a callback, the next link of a chain), so the message it hands on verifies with
  its own first key.
* A chord callback (``TaskMessage.chord_args`` >= 0): the Lua script that records the last
  member's result splices the members' results into the callback's args, so nobody can sign the
  finished body. The signature covers the callback as the worker built it, with a placeholder
  where the results go (its first ``chord_args`` args, then the placeholder); **the spliced
  results themselves are not covered**.
* A periodic definition (``PeriodicDefinition.sig``): the definition encoded with ``sig=""``.

Signing authenticates; it does not encrypt (messages stay readable JSON) and does not stop a
replay of a message that was validly signed once (message ids are idempotency keys while the
message waits). When signing is off, a worker accepts signed and unsigned messages alike, so
signing can be rolled out producers first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

import msgspec

from vecna_async.exceptions import InvalidSignature
from vecna_async.messages import CHORD_RESULTS_MARK, PeriodicDefinition, TaskMessage, encode


def key_id(key: str) -> str:
    """A short public name for a key: 8 hex digits of a hash of it (the key cannot be read back)."""
    return hashlib.sha256(b"vecna_async signing key id\x00" + key.encode()).hexdigest()[:8]


class Signer:
    """Signs with the first of ``keys`` and verifies with any of them. Built once per Server.

    >>> s = Signer(["new-key-0123456789", "old-key-0123456789"])
    >>> s.verify(b"payload", s.sign(b"payload"))
    True
    >>> s.verify(b"payload!", s.sign(b"payload"))
    False
    """

    __slots__ = ("_by_id", "_key", "_key_id")

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("a Signer needs at least one key")
        self._key = keys[0].encode()
        self._key_id = key_id(keys[0])
        self._by_id: dict[str, list[bytes]] = {}
        for k in keys:
            known = self._by_id.setdefault(key_id(k), [])
            if k.encode() not in known:
                known.append(k.encode())

    @classmethod
    def from_keys(cls, keys: Sequence[str]) -> Signer | None:
        """A Signer for ``Config.signing_keys``; None when the list is empty (no signing)."""
        return cls(keys) if keys else None

    @property
    def key_ids(self) -> list[str]:
        """The ids of the keys it verifies with, the signing key's first (for logs)."""
        return [self._key_id, *(k for k in self._by_id if k != self._key_id)]

    def __repr__(self) -> str:  # never the keys
        return f"Signer(key_ids={self.key_ids})"

    def sign(self, payload: bytes) -> str:
        """``<key id>.<mac>``: the HMAC-SHA256 of ``payload`` with the first key, base64url."""
        return f"{self._key_id}.{_mac(self._key, payload)}"

    def verify(self, payload: bytes, sig: str) -> bool:
        """True if ``sig`` is a signature of ``payload`` by one of the keys."""
        return self.problem(payload, sig) is None

    def problem(self, payload: bytes, sig: str) -> str | None:
        """Why ``sig`` does not verify (unsigned, an unknown key, altered), or None if it does.
        The comparison is constant-time; the text names key ids, never keys."""
        if not sig:
            return "the message is unsigned"
        kid, _, mac = sig.partition(".")
        keys = self._by_id.get(kid)
        if keys is None:
            return (
                f"signed with key id {kid[:16]!r}, which none of the {len(self._by_id)} "
                f"configured signing keys ({', '.join(self.key_ids)}) matches"
            )
        given = mac.encode(errors="replace")
        for key in keys:
            if hmac.compare_digest(_mac(key, payload).encode(), given):
                return None
        return f"the signature (key id {kid}) does not match: the message was altered after signing"


def _mac(key: bytes, payload: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.digest(key, payload, "sha256")).rstrip(b"=").decode()


# -- task messages -------------------------------------------------------------------------------


def task_payload(msg: TaskMessage) -> bytes:
    """What the signature of a task message covers (see the module docstring): the message
    encoded with ``sig=""``; for a chord callback, its first ``chord_args`` args and the results
    placeholder in place of its args."""
    if msg.chord_args >= 0:
        args = [*msg.args[: msg.chord_args], CHORD_RESULTS_MARK]
        return encode(msgspec.structs.replace(msg, args=args, sig=""))
    return encode(msgspec.structs.replace(msg, sig=""))


def task_problem(signer: Signer, msg: TaskMessage, body: bytes) -> str | None:
    """Why a stored task message (``body``, decoded as ``msg``) must not run, or None.

    Fast path: ``sig`` is the last field, so a body we made is its payload followed by
    ``,"sig":"..."}``; the stored bytes without that are verified as they are, with no
    re-encoding. Anything else (a chord callback, a body another encoder wrote) is verified on
    ``task_payload``.
    """
    if not msg.sig:
        return "the message is unsigned"
    tail = b',"sig":"' + msg.sig.encode(errors="replace") + b'"}'
    fast = msg.chord_args < 0 and body.endswith(tail)
    if fast and signer.verify(body[: -len(tail)] + b"}", msg.sig):
        return None
    return signer.problem(task_payload(msg), msg.sig)


def signed_body(msg: TaskMessage, signer: Signer) -> bytes:
    """``msg`` encoded and signed: ``encode(replace(msg, sig=signer.sign(encode(msg with
    sig=""))))``, with one encoding instead of two (``sig`` is the last field)."""
    if msg.sig:
        msg = msgspec.structs.replace(msg, sig="")
    payload = encode(msg)
    return payload[:-1] + b',"sig":"' + signer.sign(payload).encode() + b'"}'


# -- periodic definitions --------------------------------------------------------------------------


def sign_definition(defn: PeriodicDefinition, signer: Signer) -> PeriodicDefinition:
    """``defn`` with its signature set (over the definition encoded with ``sig=""``)."""
    unsigned = msgspec.structs.replace(defn, sig="")
    return msgspec.structs.replace(unsigned, sig=signer.sign(encode(unsigned)))


def verify_definition(defn: PeriodicDefinition, signer: Signer) -> None:
    """Raise InvalidSignature (naming the code, never a key) unless ``defn`` is signed by one of
    the signer's keys."""
    if not defn.sig:
        problem: str | None = "the definition is unsigned"
    else:
        problem = signer.problem(encode(msgspec.structs.replace(defn, sig="")), defn.sig)
    if problem is not None:
        raise InvalidSignature(f"periodic definition {defn.code!r}: {problem}")
