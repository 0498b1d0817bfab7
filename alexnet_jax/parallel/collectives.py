"""The cross-device collectives of a compiled XLA program, read from its text.

`jax.jit(f).lower(...).compile().as_text()` is the optimised, partitioned
HLO module each device runs. Every collective there (all-reduce,
all-gather, reduce-scatter, all-to-all, collective-permute; the `-start`
halves of their async forms on GPU/TPU) is one exchange between devices.
Its op metadata keeps the JAX op it came from, e.g.
`jit(step)/transpose(jvp(AlexNet))/fc7/fc7/dot_general`, which names the
layer (the model runs each layer in a named scope) and the pass (a
`transpose(` of the forward pass is the backward pass).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4}
_DTYPE_BYTES |= {"f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# `%name = <shape> <opcode>(<operands>), attributes...`; a shape is an array
# `f32[16,3,3,32]{...}` or a tuple `(f32[..], f32[..])`.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+) ([\w-]+)\((.*?)\)(?:,|$)")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
_LAYER = re.compile(r"AlexNet\)*/(\w+)/")


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str  # one of COLLECTIVE_KINDS
    operand_bytes: int  # bytes of its operands on one device
    layer: str | None  # the model layer it belongs to (None: outside the model)
    backward: bool  # in the backward pass
    op_name: str  # the JAX op it came from


def _shape_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype not in _DTYPE_BYTES:
            raise ValueError(f"collectives: unknown HLO element type {dtype!r} in {shape!r}")
        size = 1
        for dim in filter(None, dims.split(",")):
            size *= int(dim)
        total += size * _DTYPE_BYTES[dtype]
    return total


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective of a compiled HLO module, in program order."""
    shapes: dict[str, str] = {}
    found = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode, operands = match.groups()
        shapes[name] = shape  # instruction names are unique within a module
        kind = opcode.removesuffix("-start")
        if kind not in COLLECTIVE_KINDS or opcode.endswith("-done"):
            continue
        operand_names = re.findall(r"%([\w.-]+)", operands)
        op_name = re.search(r'op_name="([^"]*)"', line)
        op_name = op_name.group(1) if op_name else ""
        layer = _LAYER.search(op_name)
        found.append(
            Collective(
                kind=kind,
                operand_bytes=sum(_shape_bytes(shapes[o]) for o in operand_names),
                layer=layer.group(1) if layer else None,
                backward="transpose(" in op_name,
                op_name=op_name,
            )
        )
    return found


def bytes_by(items: Iterable[Collective], key: str) -> dict[str, int]:
    """Operand bytes summed per value of `key` ('kind', 'layer' or 'backward')."""
    totals: dict[str, int] = {}
    for item in items:
        value = str(getattr(item, key))
        totals[value] = totals.get(value, 0) + item.operand_bytes
    return totals
