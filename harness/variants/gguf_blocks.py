"""llama.cpp's quantized blocks as onnxruntime's block-quantized weights, without requantizing.

Every supported GGUF type is, per block of weights along a row, ``(code - zero_point) * scale +
offset`` with integer codes and integer zero points: ``MatMulNBits`` and ``GatherBlockQuantized``
compute the first term, and the offset, where a type has one, is the block's sum of inputs times
the offset (one small MatMul per node, see ``gguf_import``). The byte layouts are read exactly as
gguf-py's own ``gguf.quants`` dequantizes them (gguf 0.19):

- Q4_0: blocks of 32, fp16 ``d`` then 16 bytes; element j in the low nibble of byte j, element
  j + 16 in its high nibble; ``d * (q - 8)``: scale d, onnxruntime's default zero point 8.
- Q4_1: as Q4_0 with an fp16 minimum ``m`` after ``d``; ``d * q + m``: scale d, and ``m`` as an
  integer zero point z plus an offset ``m + z * d`` (``centred``).
- Q8_0: blocks of 32, fp16 ``d`` then 32 int8; ``d * q``: code q + 128, the 8-bit default zero point.
- Q4_K: super-blocks of 256: fp16 ``d`` and ``dmin``, 12 bytes of 6-bit sub-scales and sub-mins
  (``Q4_K.get_scale_min``), 128 bytes of nibbles (32 bytes serve two sub-blocks: low nibbles the
  first, high the second); sub-block j is ``d * sc_j * q - dmin * m_j``: blocks of 32 with scale
  ``d * sc_j`` and ``-dmin * m_j`` split as Q4_1's minimum is.
- Q6_K: super-blocks of 256: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales, fp16
  ``d``; ``d * sc_j * (q - 32)`` for 16 sub-blocks of 16: 8-bit codes q + 96, default zero point 128.

Why offsets and not float zero points ``-m / d``, which MatMulNBits also accepts: measured with
onnxruntime 1.32's CPU kernels, a node with float zero points is never prepacked; each call
dequantizes the whole matrix to fp32 and runs an fp32 GEMM (1536 x 576, one token: 3.0 ms against
22 us with integer zero points at ``accuracy_level`` 4, and a K x N fp32 buffer each call).
GatherBlockQuantized takes integer zero points only. The offsets are stored exactly (fp16 values
in fp32), so the weights are still the file's, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPER_BLOCK = 256  # the k-quants' QK_K


@dataclass(frozen=True)
class BlockWeights:
    """A [rows, cols] weight as ``(codes - zero_points) * scales + offsets`` per block of a row."""

    codes: np.ndarray  # uint8 [rows, cols], each below 2**bits
    scales: np.ndarray  # float32 [rows, cols // block_size]
    zero_points: np.ndarray | None  # uint8 like scales; None: onnxruntime's default 2**(bits - 1)
    offsets: np.ndarray | None  # float32 like scales; None: no offset
    bits: int
    block_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1]

    def zero_point_values(self) -> np.ndarray:
        if self.zero_points is not None:
            return self.zero_points
        return np.full(self.scales.shape, 2 ** (self.bits - 1), dtype=np.uint8)

    def dequantized(self) -> np.ndarray:
        """The float32 weights (float64 arithmetic, then rounded: each value as the file defines it)."""
        rows, cols = self.shape
        codes = self.codes.reshape(rows, -1, self.block_size).astype(np.float64)
        values = (codes - self.zero_point_values()[..., None]) * self.scales[..., None].astype(np.float64)
        if self.offsets is not None:
            values += self.offsets[..., None]
        return values.reshape(rows, cols).astype(np.float32)

    def take_rows(self, order: np.ndarray) -> BlockWeights:
        return BlockWeights(self.codes[order], self.scales[order], _rows(self.zero_points, order),
                            _rows(self.offsets, order), self.bits, self.block_size)

    def with_block_size(self, block_size: int) -> BlockWeights:
        """The same weights in smaller blocks (each block's scale, zero point and offset repeated)."""
        if block_size == self.block_size:
            return self
        assert self.block_size % block_size == 0
        repeat = self.block_size // block_size

        def spread(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else np.repeat(values, repeat, axis=1)

        return BlockWeights(self.codes, spread(self.scales), spread(self.zero_points), spread(self.offsets),
                            self.bits, block_size)

    def with_explicit_zero_points(self) -> BlockWeights:
        return BlockWeights(self.codes, self.scales, self.zero_point_values(), self.offsets, self.bits,
                            self.block_size)

    def with_explicit_offsets(self) -> BlockWeights:
        offsets = self.offsets if self.offsets is not None else np.zeros(self.scales.shape, np.float32)
        return BlockWeights(self.codes, self.scales, self.zero_points, offsets, self.bits, self.block_size)


def _rows(values: np.ndarray | None, order: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[order]


def concatenated(parts: list[BlockWeights]) -> BlockWeights | None:
    """Parts stacked by rows into one weight (a fused QKV), or None when no one layout holds them
    all (different widths or bit counts)."""
    if len({part.bits for part in parts}) > 1 or len({part.shape[1] for part in parts}) > 1:
        return None
    block_size = min(part.block_size for part in parts)
    parts = [part.with_block_size(block_size) for part in parts]
    if len({part.zero_points is None for part in parts}) > 1:
        parts = [part.with_explicit_zero_points() for part in parts]
    if len({part.offsets is None for part in parts}) > 1:
        parts = [part.with_explicit_offsets() for part in parts]

    def stacked(values: list[np.ndarray | None]) -> np.ndarray | None:
        return None if values[0] is None else np.concatenate(values)

    return BlockWeights(np.concatenate([p.codes for p in parts]), np.concatenate([p.scales for p in parts]),
                        stacked([p.zero_points for p in parts]), stacked([p.offsets for p in parts]),
                        parts[0].bits, block_size)


# --- decoding GGUF rows -----------------------------------------------------------------------

def decode(data: np.ndarray, type_name: str) -> BlockWeights:
    """A GGUF tensor's raw rows (uint8 [rows, bytes per row], as ``GGUFReader`` gives them) as
    BlockWeights; ``type_name`` is one of ``DECODERS``."""
    rows = data.shape[0]
    block_bytes = BLOCK_BYTES[type_name]
    blocks = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, block_bytes)
    codes, scales, offsets, bits, block_size = DECODERS[type_name](blocks)
    codes, scales = codes.reshape(rows, -1), scales.reshape(rows, -1).astype(np.float32)
    if offsets is None:
        return BlockWeights(codes, scales, None, None, bits, block_size)
    zero_points, rests = centred(scales, offsets.reshape(rows, -1).astype(np.float32), bits)
    return BlockWeights(codes, scales, zero_points, rests, bits, block_size)


def centred(scales: np.ndarray, offsets: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``scale * q + offset`` as ``scale * (q - z) + rest``: z the integer nearest ``-offset / scale``,
    so the part MatMulNBits computes is centred on zero, as a symmetric block's is. With int8
    activations (accuracy_level 4) their rounding error is multiplied by these weights: with z = 0
    every weight of a block has one sign and the error adds up (SmolLM2's Q4_1, 4,096 predictions:
    top-1 against fp32 0.929 with z = 0). ``rest = offset + z * scale`` is exact in fp32 in practice
    (nearly equal magnitudes cancel); a block where it is not keeps z = 0 and rest = offset."""
    safe = np.where(scales == 0, 1.0, scales.astype(np.float64))
    zero_points = np.clip(np.rint(-offsets.astype(np.float64) / safe), 0, 2**bits - 1)
    zero_points = np.where(scales == 0, 0, zero_points)
    exact_rests = offsets.astype(np.float64) + zero_points * scales.astype(np.float64)
    rests = exact_rests.astype(np.float32)
    inexact = rests.astype(np.float64) != exact_rests
    zero_points, rests = np.where(inexact, 0, zero_points), np.where(inexact, offsets, rests)
    return zero_points.astype(np.uint8), rests.astype(np.float32)


# (codes [blocks, elements], scales [blocks, sub-blocks], offsets like scales or None, bits, block size)
Decoded = tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]


def _fp16(blocks: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[:, at:at + 2]).view(np.float16).astype(np.float32)


def _nibbles_by_halves(packed: np.ndarray, width: int) -> np.ndarray:
    """Bytes of ``width`` // 2 holding elements i (low nibble) and i + width // 2 (high)."""
    groups = packed.reshape(packed.shape[0], -1, 1, width // 2) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (groups & np.uint8(0x0F)).reshape(packed.shape[0], -1)


def _q4_0(blocks: np.ndarray) -> Decoded:
    return _nibbles_by_halves(blocks[:, 2:], 32), _fp16(blocks, 0), None, 4, 32


def _q4_1(blocks: np.ndarray) -> Decoded:
    return _nibbles_by_halves(blocks[:, 4:], 32), _fp16(blocks, 0), _fp16(blocks, 2), 4, 32


def _q8_0(blocks: np.ndarray) -> Decoded:
    codes = (blocks[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return codes, _fp16(blocks, 0), None, 8, 32


def _q4_k(blocks: np.ndarray) -> Decoded:
    from gguf.quants import Q4_K

    sub_scales, sub_mins = Q4_K.get_scale_min(np.ascontiguousarray(blocks[:, 4:16]))
    scales = _fp16(blocks, 0) * sub_scales.astype(np.float32)
    offsets = -(_fp16(blocks, 2) * sub_mins.astype(np.float32))
    return _nibbles_by_halves(blocks[:, 16:], 64), scales, offsets, 4, 32


def _q6_k(blocks: np.ndarray) -> Decoded:
    count = blocks.shape[0]
    low = blocks[:, :128].reshape(count, -1, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    high = blocks[:, 128:192].reshape(count, -1, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    codes = (low & np.uint8(0x0F)).reshape(count, -1) | ((high & np.uint8(0x03)).reshape(count, -1) << np.uint8(4))
    scales = _fp16(blocks, 208) * np.ascontiguousarray(blocks[:, 192:208]).view(np.int8).astype(np.float32)
    return codes + np.uint8(96), scales, None, 8, 16


DECODERS = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q8_0": _q8_0, "Q4_K": _q4_k, "Q6_K": _q6_k}
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34, "Q4_K": 144, "Q6_K": 210}


# --- onnxruntime's layouts --------------------------------------------------------------------

def packed_codes(weights: BlockWeights) -> np.ndarray:
    """Codes as MatMulNBits stores them: uint8 [rows, blocks, block_size * bits / 8], two 4-bit
    codes a byte (element 2i in the low nibble)."""
    rows, cols = weights.shape
    codes = weights.codes.reshape(rows, cols // weights.block_size, weights.block_size)
    if weights.bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << np.uint8(4))
    return np.ascontiguousarray(codes, dtype=np.uint8)


def gathered_codes(weights: BlockWeights) -> np.ndarray:
    """Codes as GatherBlockQuantized stores a [rows, cols] table: uint8 [rows, cols * bits / 8]."""
    return packed_codes(weights).reshape(weights.shape[0], -1)


def packed_zero_points(weights: BlockWeights) -> np.ndarray:
    """Zero points as MatMulNBits and GatherBlockQuantized store them: uint8 [rows, blocks] at 8
    bits; at 4 bits two a byte along a row (block 2i in the low nibble), an odd count padded."""
    zero_points = weights.zero_point_values().astype(np.uint8)
    if weights.bits == 8:
        return np.ascontiguousarray(zero_points)
    if zero_points.shape[1] % 2:
        zero_points = np.pad(zero_points, ((0, 0), (0, 1)))
    return np.ascontiguousarray(zero_points[:, 0::2] | (zero_points[:, 1::2] << np.uint8(4)))
