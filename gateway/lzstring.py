"""Bounded decoder for LZString.compressToBase64 (what old posthog-js sends with compression=lz64).

Written here rather than taken from the lzstring package because that decoder has no output bound:
lz-string output can grow quadratically with its input, so a small request could expand to
gigabytes. This one stops as soon as the output passes ``limit`` characters.
"""

from __future__ import annotations

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}


class LZError(ValueError):
    pass


class LZTooLarge(ValueError):
    pass


def decompress_from_base64(text: str, limit: int, stop_at: int | None = None) -> str:
    """Decode; raises LZError on malformed input and LZTooLarge once the output exceeds ``limit`` chars.

    ``stop_at``: return the output as soon as it holds that many characters (what the first few input
    characters decode to, for a cheap look at what a text would become without decoding all of it).
    """
    if not text:
        raise LZError("empty input")
    try:
        values = [_VALUE[c] for c in text]
    except KeyError as exc:
        raise LZError(f"invalid character {exc}") from None
    reset = 32
    position = 0
    index = 0
    data_val = values[0]

    def bits(count: int) -> int:
        nonlocal position, index, data_val
        result, power = 0, 1
        maxpower = 1 << count
        while power != maxpower:
            resb = data_val & (reset >> position)
            position += 1
            if position == 6:
                position = 0
                index += 1
                data_val = values[index] if index < len(values) else 0
            if resb:
                result |= power
            power <<= 1
        return result

    dictionary: list[str] = ["", "", ""]
    enlarge_in, dict_size, num_bits = 4, 4, 3
    kind = bits(2)
    if kind == 2:
        return ""
    if kind not in (0, 1):
        raise LZError("invalid header")
    w = chr(bits(8 if kind == 0 else 16))
    dictionary.append(w)
    out = [w]
    size = len(w)
    while stop_at is None or size < stop_at:
        if index > len(values):
            raise LZError("truncated input")
        code = bits(num_bits)
        if code in (0, 1):
            dictionary.append(chr(bits(8 if code == 0 else 16)))
            code = dict_size
            dict_size += 1
            enlarge_in -= 1
        elif code == 2:
            return "".join(out)
        if enlarge_in == 0:
            enlarge_in = 1 << num_bits
            num_bits += 1
        if code < len(dictionary):
            entry = dictionary[code]
        elif code == dict_size:
            entry = w + w[0]
        else:
            raise LZError("invalid code")
        out.append(entry)
        size += len(entry)
        if size > limit:
            raise LZTooLarge(f"decompressed payload exceeds {limit} characters")
        dictionary.append(w + entry[0])
        dict_size += 1
        enlarge_in -= 1
        w = entry
        if enlarge_in == 0:
            enlarge_in = 1 << num_bits
            num_bits += 1
    return "".join(out)
