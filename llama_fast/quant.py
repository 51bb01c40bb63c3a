"""Weight-only quantization of the linear layers, round-to-nearest, one weight at a time.

Schemes (parse_scheme):
  int8                 symmetric, one scale per output channel
  int4 (= int4:g128),  asymmetric groupwise along K: a scale and an offset per group of G weights
  int4:g32, int4:g64, int4:g128

Format (FORMAT_VERSION 1). A QuantLinear replaces an nn.Linear(in_features=K, out_features=N) and holds, as
persistent buffers (so state_dict / safetensors names are <layer>.qweight, .scales, .offsets):
  int8  qweight int8 (N, K) row-major; scales (N,) in the model dtype;
        w[n, k] = qweight[n, k] * scales[n]
  int4  qweight uint8 (N, K // 2): byte j of row n holds k = 2j in its low nibble and k = 2j + 1 in its high
        nibble, each an unsigned q in 0..15; scales and offsets (N, K // G) in the model dtype;
        w[n, k] = q[n, k] * scales[n, k // G] + offsets[n, k // G]
Round-to-nearest: int8 scale = max|w| / 127, q = round(w / scale) in -127..127; int4 scale = (max - min) / 15,
offset = min, q = clamp(round((w - offset) / scale), 0, 15). q is computed from the scale and offset as
stored (rounded to the model dtype), so |w - w'| <= scale / 2 holds for the stored values. A zero scale (an
all-zero row, a group of equal weights) gives q = 0. Dequantization computes in fp32 and rounds once to the
model dtype; the decode kernels (llama_fast.kernels) read qweight / scales / offsets directly and keep the
fp32 value.

Which layers: every block's wqkv, wo, w13 and w2, and the output head when it is not tied to the embedding
(a tied head is the embedding matrix: it stays in the model dtype, with the embedding). Embeddings and norms
stay in the model dtype. An int4 layer whose K the group does not divide uses the largest of 128, 64, 32 that
divides K, and a layer that none divides stays unquantized; both with a QuantWarning, never silently.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import LlamaConfig

FORMAT_VERSION = 1
INT4_GROUPS = (128, 64, 32)  # largest first: the order a group falls back in
DEFAULT_INT4_GROUP = 128
SCHEMES = ("int8", "int4", "int4:g32", "int4:g64", "int4:g128")
SCHEME_CHOICES = ", ".join(SCHEMES)
# Rows are quantized / dequantized in chunks of about this many elements, so the fp32 working copies of one
# weight stay a few tens of MB (a Llama-7B w13 is 360 MB in fp32) instead of a multiple of the weight.
CHUNK_ELEMENTS = 1 << 22


class QuantError(ValueError):
    """A quantization request that cannot be met: an unknown scheme, a model or checkpoint already quantized."""


class QuantWarning(UserWarning):
    """A layer quantized with a smaller group than asked for, or left unquantized: K is not a multiple."""


@dataclass(frozen=True)
class QuantScheme:
    bits: int  # 8 or 4
    group: int | None = None  # int4: weights per (scale, offset) along K; int8: None (one scale per row)

    @property
    def name(self) -> str:
        """The canonical name: 'int8', 'int4:g128', ..."""
        return "int8" if self.bits == 8 else f"int4:g{self.group}"

    def for_in_features(self, k: int) -> "QuantScheme | None":
        """The scheme a layer with K = k input features gets: this one; int4 with the largest listed group that
        divides k when this group does not; None when none does (the layer stays unquantized)."""
        if self.bits == 8 or k % self.group == 0:
            return self
        for g in INT4_GROUPS:
            if g < self.group and k % g == 0:
                return QuantScheme(4, g)
        return None


def parse_scheme(name: str | QuantScheme) -> QuantScheme:
    """'int8' | 'int4' | 'int4:g32' | 'int4:g64' | 'int4:g128' (or a QuantScheme, passed through)."""
    if isinstance(name, QuantScheme):
        return name
    if name == "int8":
        return QuantScheme(8)
    if name == "int4":
        return QuantScheme(4, DEFAULT_INT4_GROUP)
    if isinstance(name, str) and name.startswith("int4:g") and name[6:] in {str(g) for g in INT4_GROUPS}:
        return QuantScheme(4, int(name[6:]))
    raise QuantError(f"unknown quantization scheme {name!r} (choose from {SCHEME_CHOICES})")


def scheme_name(name: str | QuantScheme | None) -> str | None:
    """The canonical name of a scheme ('int4' -> 'int4:g128'), None for None."""
    return None if name is None else parse_scheme(name).name


# ------------------------------------------------------------------------------------------- the math
def _row_chunks(n: int, k: int) -> Iterator[tuple[int, int]]:
    rows = max(1, CHUNK_ELEMENTS // max(k, 1))
    for lo in range(0, n, rows):
        yield lo, min(n, lo + rows)


def _safe(scale: torch.Tensor) -> torch.Tensor:
    """scale with zeros replaced by 1: the divisor for q (a zero-scale row or group has q = 0 anyway)."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (N, K) -> (qweight int8 (N, K), scales (N,) in weight's dtype): symmetric, per output channel."""
    n, k = weight.shape
    qweight = torch.empty((n, k), dtype=torch.int8, device=weight.device)
    scales = torch.empty(n, dtype=weight.dtype, device=weight.device)
    for lo, hi in _row_chunks(n, k):
        w = weight[lo:hi].float()
        s = (w.abs().amax(1) / 127).to(weight.dtype)
        sf = s.float()[:, None]
        q = (w / _safe(sf)).round_().clamp_(-127, 127)
        qweight[lo:hi] = torch.where(sf > 0, q, 0).to(torch.int8)
        scales[lo:hi] = s
    return qweight, scales


def quantize_int4(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight (N, K) -> (qweight uint8 (N, K // 2), scales (N, K // group), offsets (N, K // group)), the last two
    in weight's dtype: asymmetric min/max per group of `group` weights along K, two values per byte."""
    n, k = weight.shape
    if group % 2 or k % group:
        raise QuantError(f"int4 group {group} must be even and divide K = {k}")
    groups = k // group
    qweight = torch.empty((n, k // 2), dtype=torch.uint8, device=weight.device)
    scales = torch.empty((n, groups), dtype=weight.dtype, device=weight.device)
    offsets = torch.empty((n, groups), dtype=weight.dtype, device=weight.device)
    for lo, hi in _row_chunks(n, k):
        w = weight[lo:hi].float().view(hi - lo, groups, group)
        lo_w = w.amin(-1)
        s = ((w.amax(-1) - lo_w) / 15).to(weight.dtype)
        o = lo_w.to(weight.dtype)
        sf, of = s.float()[..., None], o.float()[..., None]
        q = ((w - of) / _safe(sf)).round_().clamp_(0, 15)
        q = torch.where(sf > 0, q, 0).to(torch.uint8).view(hi - lo, k)
        qweight[lo:hi] = pack_int4(q)
        scales[lo:hi] = s
        offsets[lo:hi] = o
    return qweight, scales, offsets


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q uint8 (N, K) of values 0..15 -> (N, K // 2): k = 2j in the low nibble of byte j, k = 2j + 1 in the high."""
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int4: (N, K // 2) uint8 -> (N, K) uint8 of values 0..15."""
    n, half = packed.shape
    return torch.stack((packed & 15, packed >> 4), dim=-1).view(n, 2 * half)


def dequantize_int8(qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(N, K) in scales' dtype: qweight * scales[:, None], computed in fp32."""
    n, k = qweight.shape
    out = torch.empty((n, k), dtype=scales.dtype, device=qweight.device)
    for lo, hi in _row_chunks(n, k):
        out[lo:hi] = (qweight[lo:hi].float() * scales[lo:hi, None].float()).to(scales.dtype)
    return out


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(N, K) in scales' dtype: q * scale + offset of each group, computed in fp32."""
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    groups = scales.shape[1]
    out = torch.empty((n, k), dtype=scales.dtype, device=qweight.device)
    for lo, hi in _row_chunks(n, k):
        q = unpack_int4(qweight[lo:hi]).float().view(hi - lo, groups, k // groups)
        w = q * scales[lo:hi, :, None].float() + offsets[lo:hi, :, None].float()
        out[lo:hi] = w.view(hi - lo, k).to(scales.dtype)
    return out


def quantize_tensor(weight: torch.Tensor, scheme: QuantScheme) -> dict[str, torch.Tensor]:
    """A linear weight (N, K) -> its QuantLinear buffers by name (qweight, scales and, for int4, offsets)."""
    if scheme.bits == 8:
        return dict(zip(("qweight", "scales"), quantize_int8(weight)))
    return dict(zip(("qweight", "scales", "offsets"), quantize_int4(weight, scheme.group)))


# ------------------------------------------------------------------------------------------- the module
class QuantLinear(nn.Module):
    """A linear layer over quantized weights (the format above). forward dequantizes the whole weight and runs
    F.linear: the torch path (CPU, prefill, the reference of the kernels). Built empty (on any device, meta
    included) and filled by load_state_dict(assign=True), or from a full-precision weight by from_weight."""

    def __init__(self, in_features: int, out_features: int, bits: int, group: int | None = None, *,
                 bias: bool = False, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        if bits not in (8, 4):
            raise QuantError(f"bits must be 8 or 4, got {bits}")
        if bits == 4 and (group is None or group % 2 or in_features % group):
            raise QuantError(f"int4 needs an even group dividing in_features = {in_features}, got {group}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group = bits, (group if bits == 4 else None)
        dtype = dtype or torch.get_default_dtype()
        n, k = out_features, in_features
        if bits == 8:
            self.register_buffer("qweight", torch.empty((n, k), dtype=torch.int8, device=device))
            self.register_buffer("scales", torch.empty(n, dtype=dtype, device=device))
            self.register_buffer("offsets", None)
        else:
            self.register_buffer("qweight", torch.empty((n, k // 2), dtype=torch.uint8, device=device))
            self.register_buffer("scales", torch.empty((n, k // group), dtype=dtype, device=device))
            self.register_buffer("offsets", torch.empty((n, k // group), dtype=dtype, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(n, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, scheme: QuantScheme,
                    bias: torch.Tensor | None = None) -> "QuantLinear":
        """Quantize weight (N, K) (round-to-nearest); bias, if any, is kept as is."""
        n, k = weight.shape
        layer = cls(k, n, scheme.bits, scheme.group, bias=bias is not None, dtype=weight.dtype, device="meta")
        for name, t in quantize_tensor(weight.detach(), scheme).items():
            setattr(layer, name, t)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
        return layer

    @property
    def scheme(self) -> QuantScheme:
        return QuantScheme(self.bits, self.group)

    @property
    def dtype(self) -> torch.dtype:
        """The model dtype: of the scales, the dequantized weight and the output."""
        return self.scales.dtype

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized weight: qweight + scales (+ offsets); the bias not included."""
        return sum(t.nbytes for t in (self.qweight, self.scales, self.offsets) if t is not None)

    def dequantize(self) -> torch.Tensor:
        """The (N, K) weight in the model dtype. On CUDA one Triton kernel (kernels.dequant.dequantize_weight: the
        same fp32 arithmetic, at the copy bandwidth), elsewhere the torch ops below."""
        if self.qweight.is_cuda:
            from .kernels.dequant import dequantize_weight

            return dequantize_weight(self.qweight, self.scales, self.offsets, self.group or 0)
        if self.bits == 8:
            return dequantize_int8(self.qweight, self.scales)
        return dequantize_int4(self.qweight, self.scales, self.offsets)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, materialized on each access: what code written for nn.Linear that multiplies
        by `layer.weight` (or slices it) computes with. Not stored: the layer holds only the quantized form."""
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.scheme.name}, "
                f"bias={self.bias is not None}")


# ------------------------------------------------------------------------------------------- whole models
def layer_schemes(cfg: LlamaConfig, scheme: str | QuantScheme, warn: bool = True) -> dict[str, QuantScheme | None]:
    """Each linear layer the scheme quantizes (cfg.linear_shapes(); the output head only when untied) -> the
    scheme it gets: the scheme itself, int4 with a smaller group where K is not a multiple of the asked one, or
    None where no listed group divides K (the layer stays in the model dtype). With warn, one QuantWarning per
    K that falls back."""
    s = parse_scheme(scheme)
    shapes = cfg.linear_shapes()
    if cfg.tie_word_embeddings:
        del shapes["output"]
    result, fallbacks = {}, defaultdict(list)
    for name, (_, k) in shapes.items():
        result[name] = s.for_in_features(k)
        if result[name] != s:
            fallbacks[k].append(name)
    if warn:
        for k, names in fallbacks.items():
            got = result[names[0]]
            kinds = sorted({n.rsplit(".", 1)[-1] for n in names})
            what = (f"they use group {got.group}" if got is not None else
                    f"no group of {', '.join(map(str, INT4_GROUPS))} divides it: they stay unquantized")
            warnings.warn(f"{s.name}: {len(names)} linear layers ({', '.join(kinds)}) have K = {k}, not a multiple "
                          f"of {s.group}; {what}", QuantWarning, stacklevel=3)
    return result


def quantized_bytes(cfg: LlamaConfig, scheme: str | QuantScheme, dtype: torch.dtype,
                    include_embedding: bool = True) -> int:
    """Bytes of the model's weights as quantized by the scheme: quantized linears (qweight + scales + offsets),
    every other tensor (embedding, norms, biases, unquantized layers, a tied head) in dtype. Without the
    embedding: what a decode step reads (a tied head is counted once, as the head)."""
    elem = torch.empty((), dtype=dtype).element_size()
    shapes = cfg.linear_shapes()
    total_params = cfg.num_parameters(include_embedding=include_embedding)
    quantized = 0
    for name, layer in layer_schemes(cfg, scheme, warn=False).items():
        if layer is None:
            continue
        n, k = shapes[name]
        total_params -= n * k
        if layer.bits == 8:
            quantized += n * k + n * elem
        else:
            quantized += n * k // 2 + 2 * n * (k // layer.group) * elem
    return quantized + total_params * elem


def quantize_model_(model: nn.Module, scheme: str | QuantScheme) -> nn.Module:
    """Replace the linear layers of a llama_fast Transformer by QuantLinears, one layer at a time: each layer's
    full-precision weight is dropped as soon as its quantized copy exists (freed unless the caller holds it), so
    the model never holds two copies of its weights. A tied output head stays (it is the embedding). A LlamaFast
    over this model must be reconfigured (LlamaFast.configure) to drop steps compiled for the old layers."""
    for name, layer_scheme in layer_schemes(model.config, scheme).items():
        if layer_scheme is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, attr)
        if isinstance(linear, QuantLinear):
            raise QuantError(f"{name} is already quantized ({linear.scheme.name})")
        setattr(parent, attr, QuantLinear.from_weight(linear.weight, layer_scheme, linear.bias))
        del linear
    return model


def install_quant_linears_(model: nn.Module, schemes: dict[str, QuantScheme | None], dtype: torch.dtype):
    """Replace each linear layer with a scheme by an empty QuantLinear on the meta device (the skeleton that
    load_state_dict(assign=True) fills), keeping its shape and whether it has a bias."""
    for name, layer_scheme in schemes.items():
        if layer_scheme is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, attr)
        setattr(parent, attr, QuantLinear(linear.in_features, linear.out_features, layer_scheme.bits,
                                          layer_scheme.group, bias=linear.bias is not None, dtype=dtype,
                                          device="meta"))


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    """The model's QuantLinear layers by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
