"""Errors raised by :mod:`jaxattr.bridge`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "BridgeError",
    "ExportError",
    "TrainModeError",
    "UnsupportedArgumentsError",
    "UnsupportedOpsError",
]


class BridgeError(RuntimeError):
    """Base class of every error the bridge raises on purpose."""


class UnsupportedOpsError(BridgeError, NotImplementedError):
    """The exported graph uses ops that have no JAX lowering.

    Raised once, before anything runs, listing every unsupported op with the layers (torch
    module paths) it appears in, or for an ONNX model with the node names and opset.

    Attributes:
        ops: Maps each unsupported op name (e.g. ``"aten._fft_r2c.default"``, ONNX
            ``"LpPool"`` or ``"com.microsoft::FusedGemm"``) to the module paths (torch) or
            node names (ONNX) that use it.

    Example:
        >>> try:
        ...     bridge.from_torch(model_with_fft, torch.randn(2, 8))
        ... except bridge.UnsupportedOpsError as e:
        ...     print(sorted(e.ops))  # the FFT, and abs of its complex result
        ['aten._fft_r2c.default', 'aten.abs.default']
    """

    def __init__(
        self,
        ops: dict[str, Sequence[str]],
        *,
        where: str = "the exported graph",
        detail: Mapping[str, str] | None = None,
        hint: str | None = None,
    ):
        self.ops = {k: list(v) for k, v in ops.items()}
        detail = detail or {}
        label = "nodes" if detail else "used in"
        lines = [
            f"  {op}  ({detail[op] + '; ' if op in detail else ''}{label}: "
            f"{', '.join(p or '<root module>' for p in paths)})"
            for op, paths in sorted(self.ops.items())
        ]
        super().__init__(
            f"{len(self.ops)} op(s) in {where} have no JAX lowering:\n"
            + "\n".join(lines)
            + "\n"
            + (
                hint
                or "See jaxattr.bridge.supported_ops() for what is supported; rewrite the "
                "module with supported ops or add a lowering with "
                "jaxattr.bridge.register_lowering()."
            )
        )


class ExportError(BridgeError):
    """``torch.export`` could not capture the module (e.g. data-dependent control flow)."""


class TrainModeError(BridgeError, ValueError):
    """The module (or a BatchNorm/Dropout inside it) is in training mode."""


class UnsupportedArgumentsError(UnsupportedOpsError):
    """An op that has a lowering, used with arguments the lowering cannot express.

    For example a complex dtype, or reading ``x[bool_mask]`` (its shape depends on the data,
    which one traced JAX program cannot have). A subclass of :class:`UnsupportedOpsError`,
    so ``except UnsupportedOpsError`` catches both.

    Attributes:
        ops: Maps the op name to the module paths (or node names) that use it.
        reason: What about the arguments cannot be lowered, and what to do instead.

    Example:
        >>> e = UnsupportedArgumentsError("aten.index.Tensor", "boolean mask", ["head"])
        >>> sorted(e.ops), e.reason
        (['aten.index.Tensor'], 'boolean mask')
    """

    def __init__(self, op: str, reason: str, paths: Sequence[str] = ()):
        self.ops = {op: list(paths)}
        self.reason = reason
        where = f" (used in: {', '.join(p or '<root module>' for p in paths)})" if paths else ""
        BridgeError.__init__(self, f"{op}{where}: {reason}")
