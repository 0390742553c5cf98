#!/usr/bin/env python3
"""Reads an 8-bit palette PNG with nothing but the Python standard library (an independent
reader for the tests): prints {"width", "height", "palette": [[r, g, b], ...], "indices": [...]}
as JSON. Only what rfnc writes is supported: 8-bit indexed, no interlace."""
import json
import struct
import sys
import zlib


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def read(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, palette = 8, b"", []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, colour, interlace) == (8, 3, 0), "not an 8-bit palette PNG"
        elif kind == b"PLTE":
            palette = [list(body[i:i + 3]) for i in range(0, len(body), 3)]
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    rows, prev, at = [], [0] * width, 0
    for _ in range(height):
        kind, line = raw[at], list(raw[at + 1:at + 1 + width])
        at += 1 + width
        for x in range(width):
            a = line[x - 1] if x else 0
            b, c = prev[x], (prev[x - 1] if x else 0)
            line[x] = (line[x] + [0, a, b, (a + b) // 2, paeth(a, b, c)][kind]) & 255
        rows.append(line)
        prev = line
    return {"width": width, "height": height, "palette": palette, "indices": sum(rows, [])}


if __name__ == "__main__":
    print(json.dumps(read(sys.argv[1])))
