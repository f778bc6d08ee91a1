"""Just enough DER to do two things without a crypto dependency: tell which
PEM label a DER private key needs, and read a certificate's subject DN.
Pure functions; malformed input raises ValueError.
"""

from __future__ import annotations

from collections.abc import Iterator

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
OCTET_STRING = 0x04
OID = 0x06


def read_tlv(data: bytes, offset: int = 0) -> tuple[int, bytes, int]:
    """One TLV at ``offset``: (tag, value, offset after it)."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[offset]
    length = data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    end = offset + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, data[offset:end], end


def children(value: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset < len(value):
        tag, inner, offset = read_tlv(value, offset)
        yield tag, inner


def private_key_pem_label(der: bytes) -> str:
    """``PRIVATE KEY`` (PKCS#8), ``RSA PRIVATE KEY`` (PKCS#1) or
    ``EC PRIVATE KEY`` (SEC 1), from the shape of the outer SEQUENCE."""
    tag, body, _ = read_tlv(der)
    if tag != SEQUENCE:
        raise ValueError("not a DER private key")
    items = list(children(body))
    if len(items) < 3 or items[0][0] != INTEGER:
        raise ValueError("not a DER private key")
    second = items[1][0]
    if second == SEQUENCE:
        return "PRIVATE KEY"
    if second == INTEGER:
        return "RSA PRIVATE KEY"
    if second == OCTET_STRING:
        return "EC PRIVATE KEY"
    raise ValueError("unknown DER private key format")


_SUBJECT_ORDER = {
    "2.5.4.6": "C",
    "2.5.4.8": "ST",
    "2.5.4.7": "L",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.3": "CN",
}
_ESCAPED = {",", "=", "+", "<", ">", "#", "\\"}


def _oid_text(value: bytes) -> str:
    if not value:
        raise ValueError("empty OID")
    parts = [value[0] // 40, value[0] % 40]
    number = 0
    for byte in value[1:]:
        number = (number << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(number)
            number = 0
    return ".".join(map(str, parts))


def _string_value(tag: int, value: bytes) -> str:
    if tag == 0x1E:  # BMPString
        return value.decode("utf-16-be", "replace")
    if tag == 0x1C:  # UniversalString
        return value.decode("utf-32-be", "replace")
    if tag == 0x14:  # T61String: treat as Latin-1, as most tools do
        return value.decode("latin-1")
    return value.decode("utf-8", "replace")


def _escape(text: str) -> str:
    out = []
    for char in text:
        if char == "\n":
            out.append("\\n")
        elif char in _ESCAPED:
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def certificate_subject(der: bytes) -> str:
    """The subject of a DER certificate as ``C=…, ST=…, L=…, O=…, OU=…, CN=…``:
    only those attributes, in that order, repeated ones in certificate order."""
    _, cert, _ = read_tlv(der)
    _, tbs, _ = read_tlv(cert)
    fields = list(children(tbs))
    if fields and fields[0][0] == 0xA0:  # explicit [0] version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject
    if len(fields) < 5 or fields[4][0] != SEQUENCE:
        raise ValueError("not a certificate")
    found: dict[str, list[str]] = {name: [] for name in _SUBJECT_ORDER.values()}
    for set_tag, rdn in children(fields[4][1]):
        if set_tag != SET:
            raise ValueError("bad RDN")
        for _, attribute in children(rdn):
            (oid_tag, oid), (value_tag, value) = list(children(attribute))[:2]
            name = _SUBJECT_ORDER.get(_oid_text(oid)) if oid_tag == OID else None
            if name is not None:
                found[name].append(_escape(_string_value(value_tag, value)))
    return ", ".join(f"{name}={value}" for name in _SUBJECT_ORDER.values() for value in found[name])
