"""Tiny JPEG encoders for the transfer syntaxes pydicom can decode but not encode.

JPEG lossless (process 14, first-order prediction) and 12-bit JPEG Extended (process 4, DCT) are
what hospital archives hold; no installed package writes them, so tests make their own files
here. One grey component, one scan, fixed-length Huffman codes (valid JPEG, just not small).
"""

from __future__ import annotations

import struct

import numpy as np

ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
    20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58,
    59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
])


class _Bits:
    """MSB-first bit writer with JPEG's 0xFF byte stuffing."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.value = 0
        self.count = 0

    def put(self, code: int, length: int) -> None:
        for shift in range(length - 1, -1, -1):
            self.value = (self.value << 1) | ((code >> shift) & 1)
            self.count += 1
            if self.count == 8:
                self.out.append(self.value)
                if self.value == 0xFF:
                    self.out.append(0)
                self.value = self.count = 0

    def flush(self) -> bytes:
        if self.count:
            self.put((1 << (8 - self.count)) - 1, 8 - self.count)
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def _huffman(table_class: int, table_id: int, symbols: list[int], length: int) -> tuple[bytes, dict]:
    """A DHT segment giving every symbol a code of the same length, and the symbol -> code map."""
    counts = [0] * 16
    counts[length - 1] = len(symbols)
    segment = _segment(0xFFC4, bytes([table_class << 4 | table_id, *counts, *symbols]))
    return segment, {symbol: (code, length) for code, symbol in enumerate(symbols)}


def _magnitude(value: int) -> tuple[int, int]:
    """JPEG's (category, extra bits) of a signed difference."""
    size = int(abs(value)).bit_length()
    return size, (value if value >= 0 else value + (1 << size) - 1)


def _frame(sof: int, precision: int, image: np.ndarray) -> bytes:
    rows, columns = image.shape
    return _segment(sof, struct.pack(">BHHB", precision, rows, columns, 1) + bytes([1, 0x11, 0]))


def encode_lossless(image: np.ndarray, precision: int) -> bytes:
    """Grey uint16 (H, W) -> JPEG lossless, process 14, selection value 1 (left neighbour)."""
    image = image.astype(np.int64)
    dht, codes = _huffman(0, 0, list(range(17)), 5)
    bits = _Bits()
    rows, columns = image.shape
    for y in range(rows):
        for x in range(columns):
            if x > 0:
                predicted = image[y, x - 1]
            elif y > 0:
                predicted = image[y - 1, x]
            else:
                predicted = 1 << (precision - 1)
            difference = int(image[y, x] - predicted)
            size, extra = _magnitude(difference)
            bits.put(*codes[size])
            if size:
                bits.put(extra, size)
    scan = _segment(0xFFDA, bytes([1, 1, 0x00, 1, 0, 0]))  # Ss=1 (predictor), Se=0, Ah/Al=0
    return b"\xff\xd8" + _frame(0xFFC3, precision, image) + dht + scan + bits.flush() + b"\xff\xd9"


def _dct_matrix() -> np.ndarray:
    k = np.arange(8)
    matrix = np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16) / 2
    matrix[0] /= np.sqrt(2)
    return matrix


def encode_extended12(image: np.ndarray) -> bytes:
    """Grey 12-bit (H, W), H and W multiples of 8 -> JPEG Extended (process 4), all quantisers 1."""
    image = image.astype(np.float64) - 2048
    dqt = _segment(0xFFDB, bytes([0x00, *([1] * 64)]))
    dc_dht, dc = _huffman(0, 0, list(range(16)), 5)
    ac_symbols = [0x00, 0xF0] + [run << 4 | size for run in range(16) for size in range(1, 15)]
    ac_dht, ac = _huffman(1, 0, ac_symbols, 8)
    basis = _dct_matrix()
    bits = _Bits()
    previous = 0
    for y in range(0, image.shape[0], 8):
        for x in range(0, image.shape[1], 8):
            coefficients = np.rint(basis @ image[y : y + 8, x : x + 8] @ basis.T).astype(int).ravel()[ZIGZAG]
            size, extra = _magnitude(int(coefficients[0]) - previous)
            previous = int(coefficients[0])
            bits.put(*dc[size])
            if size:
                bits.put(extra, size)
            run = 0
            for value in coefficients[1:]:
                if value == 0:
                    run += 1
                    continue
                while run > 15:
                    bits.put(*ac[0xF0])
                    run -= 16
                size, extra = _magnitude(int(value))
                bits.put(*ac[run << 4 | size])
                bits.put(extra, size)
                run = 0
            if run:
                bits.put(*ac[0x00])
    scan = _segment(0xFFDA, bytes([1, 1, 0x00, 0, 63, 0]))
    return b"\xff\xd8" + dqt + _frame(0xFFC1, 12, image) + dc_dht + ac_dht + scan + bits.flush() + b"\xff\xd9"
