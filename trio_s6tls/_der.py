"""Just enough DER to do two things without a crypto dependency: tell which
PEM label a DER private key needs, and write a certificate's subject DN the
way the C tools export it (``SSL_PEER_CERT_SUBJECT``: BearSSL's decoding of
six name elements, then s6-networking's printer; details at
:func:`certificate_subject`). Pure functions; malformed input raises
ValueError.
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


# SSL_PEER_CERT_SUBJECT as the C tools on BearSSL make it.
#
# BearSSL's X.509 engine (x509_minimal) is given six name elements to
# fill from the end-entity subject (s6-networking's sbearssl_x509_small):
# C, ST, L, O, OU, CN, each into a buffer of 3, 129, 129, 65, 65, 65 bytes.
# Walking the subject's attributes in order, an attribute fills the first
# element of its OID that is still unfilled (so a repeated attribute keeps
# its first value). Its value is decoded to UTF-8 (UTF8String; Numeric-,
# Printable-, Teletex- and IA5String as Latin-1; BMPString as UTF-16,
# big-endian unless it starts with FF FE); a NUL, an invalid
# sequence, a surrogate or a noncharacter, another string type, or a value
# that does not fit its buffer marks the element invalid instead. Leading
# U+FEFF marks are dropped. Then sbearssl_send_environment prints the
# filled elements in that order, ``KEY=value`` joined by ``, ``, with each
# value's leading and trailing spaces dropped and ``,=+<>#\`` and newline
# preceded by a backslash (a backslash, not ``n``); a special character
# right after inner spaces gets its backslash before those spaces (C's
# printer emits them in that order). One invalid element makes the whole
# value ``<invalid>``; no element at all leaves the variable unset.

_DN_ELEMENTS = (
    # keyword, OID (DER value), longest value in bytes (buffer less its NUL)
    ("C", b"\x55\x04\x06", 2),
    ("ST", b"\x55\x04\x08", 128),
    ("L", b"\x55\x04\x07", 128),
    ("O", b"\x55\x04\x0a", 64),
    ("OU", b"\x55\x04\x0b", 64),
    ("CN", b"\x55\x04\x03", 64),
)
INVALID_SUBJECT = "<invalid>"
_UTF8STRING = 0x0C
_LATIN1_STRINGS = {0x12, 0x13, 0x14, 0x16}  # Numeric, Printable, Teletex, IA5
_BMPSTRING = 0x1E
_SPECIAL = frozenset(b",=\n+<>#\\")


def _valid_code_point(cp: int) -> bool:
    # BearSSL's valid-unicode?: no NUL (refused when read), no surrogate,
    # none of the 66 noncharacters.
    return (
        cp != 0
        and not 0xD800 <= cp <= 0xDFFF
        and not 0xFDD0 <= cp <= 0xFDEF
        and (cp & 0xFFFF) < 0xFFFE
    )


def _code_points(text: str) -> list[int] | None:
    points = [ord(char) for char in text]
    return points if all(map(_valid_code_point, points)) else None


def _bmp_code_points(value: bytes) -> list[int] | None:
    """UTF-16 as BearSSL reads a BMPString: big-endian unless it starts
    with ``FF FE``. A bad code unit ends the reading (invalid); running out
    of bytes inside a code unit fails the whole certificate in BearSSL,
    here a ValueError."""
    position = 0

    def unit(little: bool) -> int:
        nonlocal position
        if position + 2 > len(value):
            raise ValueError("truncated BMPString")
        pair = value[position : position + 2]
        position += 2
        return int.from_bytes(pair, "little" if little else "big")

    def code_point(little: bool) -> int:  # 0: not a valid code point
        first = unit(little)
        if 0xD800 <= first <= 0xDBFF:
            if position == len(value):
                return 0
            second = unit(little)
            if not 0xDC00 <= second <= 0xDFFF:
                return 0
            return 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        return 0 if 0xDC00 <= first <= 0xDFFF else first

    if not value:
        return []
    points = []
    first = code_point(False)
    little = first == 0xFFFE
    if not little:
        if not first:
            return None
        points.append(first)
    while position < len(value):
        point = code_point(little)
        if not point:
            return None
        points.append(point)
    return points if all(map(_valid_code_point, points)) else None


def dn_string_utf8(tag: int, value: bytes) -> bytes | None:
    """A DN attribute value decoded as BearSSL decodes it, as UTF-8 bytes;
    ``None`` where BearSSL marks it invalid. ValueError where BearSSL
    rejects the certificate (a constructed string, a truncated BMPString)."""
    tag_class, constructed, number = tag & 0xC0, bool(tag & 0x20), tag & 0x1F
    if tag_class in (0x40, 0xC0) or number == 0x1F:  # BearSSL reads no such tag
        raise ValueError("unsupported tag in a DN")
    if tag_class == 0x80:
        return None  # context-specific: not a string
    if constructed:
        if number in {_UTF8STRING, _BMPSTRING, *_LATIN1_STRINGS}:
            raise ValueError("constructed string in a DN")
        return None
    points: list[int] | None
    if tag == _UTF8STRING:
        try:
            points = _code_points(value.decode("utf-8"))
        except UnicodeDecodeError:
            points = None
    elif tag in _LATIN1_STRINGS:
        points = None if 0 in value else list(value)
    elif tag == _BMPSTRING:
        points = _bmp_code_points(value)
    else:
        return None  # not a string type BearSSL decodes
    if points is None:
        return None
    while points and points[0] == 0xFEFF:  # leading byte-order marks are dropped
        del points[0]
    return "".join(map(chr, points)).encode("utf-8")


def escape_dn_value(value: bytes) -> bytes:
    """sbearssl's print_element: leading and trailing spaces dropped, inner
    runs kept, ``,=+<>#\\`` and newline escaped with a backslash (which
    comes before the pending spaces when the special character follows
    them, as C prints it)."""
    out = bytearray()
    pending = None  # spaces seen after text, not yet printed
    for byte in value:
        if byte == 0x20:
            if out:
                pending = (pending or 0) + 1
            continue
        if byte in _SPECIAL:
            out += b"\\"
        if pending:
            out += b" " * pending
        pending = None
        out.append(byte)
    return bytes(out)


def _subject_name(der: bytes) -> bytes:
    _, cert, _ = read_tlv(der)
    _, tbs, _ = read_tlv(cert)
    fields = list(children(tbs))
    if fields and fields[0][0] == 0xA0:  # explicit [0] version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject
    if len(fields) < 5 or fields[4][0] != SEQUENCE:
        raise ValueError("not a certificate")
    return fields[4][1]


def certificate_subject(der: bytes) -> str | None:
    """``SSL_PEER_CERT_SUBJECT`` for a DER certificate, exactly as the C
    tools on BearSSL export it (see above): ``C=…, ST=…, L=…, O=…, OU=…,
    CN=…`` with the attributes present, ``<invalid>`` if one of them cannot
    be decoded, ``None`` (unset) if the subject has none of them.
    ValueError for a certificate BearSSL would not decode."""
    values: list[bytes | None] = [None] * len(_DN_ELEMENTS)
    found = [False] * len(_DN_ELEMENTS)
    for set_tag, rdn in children(_subject_name(der)):
        if set_tag != SET or not rdn:
            raise ValueError("bad RDN")
        for attribute_tag, attribute in children(rdn):
            parts = list(children(attribute))
            if attribute_tag != SEQUENCE or len(parts) != 2 or parts[0][0] != OID:
                raise ValueError("bad attribute in a DN")
            (_, oid), (value_tag, value) = parts
            decoded = dn_string_utf8(value_tag, value)
            for index, (_, element_oid, longest) in enumerate(_DN_ELEMENTS):
                if not found[index] and oid == element_oid:
                    found[index] = True
                    fits = decoded is not None and len(decoded) <= longest
                    values[index] = decoded if fits else None
                    break
    if not any(found):
        return None
    if any(is_found and value is None for is_found, value in zip(found, values, strict=True)):
        return INVALID_SUBJECT
    return ", ".join(
        f"{keyword}={escape_dn_value(value).decode('utf-8')}"
        for (keyword, _, _), value in zip(_DN_ELEMENTS, values, strict=True)
        if value is not None
    )
