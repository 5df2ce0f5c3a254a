"""The id every prediction carries, and reading one back when its true label arrives.

An id holds what the feedback needs to score the prediction: when it was made, which model
version answered and what it answered, and the challenger's answer when one was scored. It is
signed (keyed BLAKE2b) with the ledger's secret, so any worker, and the API after a restart,
can trust an id it never stored: ``/predict`` writes nothing per prediction, and an id that was
altered or made up reads as unknown. Only ids that have been labelled are stored (in the
feedback ledger), so that none is counted twice.

Layout, before the signature and base64url: format (1 byte), issued at (uint32 seconds),
request nonce (8 random bytes), record index (uint32), labels (1 byte: bit 0 the champion's,
bits 1-2 the challenger's, 0 when none), then the champion's and the challenger's versions
as length-prefixed UTF-8. The nonce and index make each id's key unique by construction.
"""

import base64
import binascii
import functools
import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass

FORMAT = 1
# base64 to base64url, as base64.urlsafe_b64encode translates it.
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_HEAD = struct.Struct(">BI8sIB")
SIGNATURE_BYTES = 12
# Personalisation keeps these signatures apart from any other use of the same key.
_PERSON = b"hvs-prediction"
# The shortest id: the head, two empty version prefixes and the signature, in base64url unpadded.
_SHORTEST_ID_CHARS = -(-(_HEAD.size + 2 + SIGNATURE_BYTES) * 4 // 3)
ID_PATTERN = f"^[A-Za-z0-9_-]{{{_SHORTEST_ID_CHARS},}}$"


@dataclass(frozen=True)
class Prediction:
    """What an id says about the prediction it was issued for."""

    key: bytes  # nonce and index: the ledger's primary key
    issued_at: int
    model_version: str
    label_id: int
    challenger_version: str | None = None
    challenger_label_id: int | None = None


class InvalidId(ValueError):
    """Not an id this API issued with its secret: malformed, altered or signed by another key."""


@functools.lru_cache(maxsize=16)  # the same one or two versions on every request, until a promotion
def _versions(champion: str, challenger: str | None) -> bytes:
    parts = b""
    for version in (champion, challenger or ""):
        raw = version.encode()[:255]
        parts += bytes([len(raw)]) + raw
    return parts


class PredictionIds:
    """Issues and reads ids under one secret."""

    def __init__(self, secret: bytes):
        self._signer = hashlib.blake2b(key=secret, digest_size=SIGNATURE_BYTES, person=_PERSON)

    def _sign(self, body: bytes) -> bytes:
        signer = self._signer.copy()
        signer.update(body)
        return signer.digest()

    def issue(
        self,
        model_version: str,
        label_ids: list[int],
        challenger_version: str | None = None,
        challenger_label_ids: list[int] | None = None,
        now: float | None = None,
    ) -> list[str]:
        """One id per record of a request: the champion's labels, and the challenger's if scored."""
        issued_at = int(time.time() if now is None else now)
        nonce = os.urandom(8)
        versions = _versions(model_version, challenger_version)
        challenger = challenger_label_ids or [None] * len(label_ids)
        # The loop of _sign and base64.urlsafe_b64encode inlined: their Python frames were a
        # third of an id's cost, and a batch issues one id per record.
        pack, signer, ids = _HEAD.pack, self._signer, []
        for index, (label, other) in enumerate(zip(label_ids, challenger, strict=True)):
            labels = label | ((0 if other is None else other + 1) << 1)
            body = pack(FORMAT, issued_at, nonce, index, labels) + versions
            signature = signer.copy()
            signature.update(body)
            encoded = binascii.b2a_base64(body + signature.digest(), newline=False).translate(_URLSAFE)
            ids.append(encoded.rstrip(b"=").decode("ascii"))
        return ids

    def read(self, text: str) -> Prediction:
        """The prediction behind ``text``, or ``InvalidId``."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidId("not base64url") from exc
        body, signature = raw[:-SIGNATURE_BYTES], raw[-SIGNATURE_BYTES:]
        if len(body) < _HEAD.size + 2 or not hmac.compare_digest(self._sign(body), signature):
            raise InvalidId("the signature does not match")
        fmt, issued_at, nonce, index, labels = _HEAD.unpack_from(body)
        if fmt != FORMAT:
            raise InvalidId(f"format {fmt}")
        rest = body[_HEAD.size :]
        champion_length = rest[0]
        champion = rest[1 : 1 + champion_length].decode()
        challenger_length = rest[1 + champion_length]
        challenger = rest[2 + champion_length : 2 + champion_length + challenger_length].decode()
        other = (labels >> 1) & 0b11
        return Prediction(
            nonce + index.to_bytes(4, "big"),
            issued_at,
            champion,
            labels & 1,
            challenger or None,
            other - 1 if other else None,
        )
