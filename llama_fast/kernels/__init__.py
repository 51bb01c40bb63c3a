"""Triton kernels for the memory-bound batch-1 decode step (imported only where they run: model.py imports
them lazily, so CPU-only code never needs Triton).

Each op is a torch.library.triton_op (llama_fast::<name>), so torch.compile keeps it inside the step graph;
launched eagerly (the fastest path's decode block, inside the step's CUDA graph) they take pinned configs and
may use programmatic dependent launch.

  gemv.py       the fused decode GEMV: gemv, gemv_rmsnorm, gemv_residual_ss, gemv_rmsnorm_swiglu, ss_partials,
                row_ss_partials and row_narrow_ss (a tensor-parallel all-reduce's output)
  gemm.py       the small-M decode GEMM (batch 2-16, quantized weights 2-64; tensor cores, split-K):
                small_m_gemm (RMSNorm prologue), small_m_gemm_residual, small_m_gemm_swiglu; the kernels-only
                step's forms (small_m_qkv_rope, small_m_residual_ss, small_m_swiglu_ss, small_m_rmsnorm_ss)
  qkv_rope.py   the wqkv GEMV with RoPE and the K/V cache write: gemv_rmsnorm_qkv_rope
  gemv_rows.py  the kernels-only step's forms on those GEMVs for quantized weights at 2 rows (ROWS_MAX)
  dequant.py    int8 / int4 weights in those GEMVs and in the small-M GEMM (scales / offsets / group arguments)
  allreduce.py  tensor parallel: the batch-1 block's one-shot all-reduce with the next RMSNorm's partials
                (imported where used: parallel.SymmAllReduce)
  lamport.py    the all-reduce's slot protocol (-0.0 marks an empty value), shared with the residual GEMV
                that all-reduces its own rows (gemv.gemv_residual_allreduce)
  attention.py  split-K decode attention: decode_attention, decode_attention_one_launch
  sampling.py   the sampled pick without a sort: sample_pick (temperature, top-k, top-p, Gumbel-max)
  pdl.py        programmatic dependent launch: the PDL_* modes and where they apply; interpreting()
  configs.py    launch configs per GPU (CONFIG_TABLE), autotune search space, CONFIG_OVERRIDE
  tuning.py     configs for GPUs the table does not hold: a short autotune, cached on disk
"""
from .attention import decode_attention, decode_attention_one_launch
from .gemm import (GEMM_DENSE_MAX_ROWS, GEMM_MAX_ROWS, GEMM_MIN_ROWS, small_m_gemm, small_m_gemm_residual,
                   small_m_gemm_swiglu)
from .gemv import (GEMV_MAX_ROWS, gemv, gemv_residual_ss, gemv_rmsnorm, gemv_rmsnorm_swiglu, row_narrow_ss,
                   row_ss_partials, ss_partials)
from .pdl import PDL_OFF, PDL_TRIGGER_EARLY, PDL_TRIGGER_LATE
from .qkv_rope import gemv_rmsnorm_qkv_rope
from .sampling import sample_pick

__all__ = ["GEMM_DENSE_MAX_ROWS", "GEMM_MAX_ROWS", "GEMM_MIN_ROWS", "GEMV_MAX_ROWS", "PDL_OFF", "PDL_TRIGGER_EARLY",
           "PDL_TRIGGER_LATE", "decode_attention", "decode_attention_one_launch", "gemv", "gemv_residual_ss",
           "gemv_rmsnorm", "gemv_rmsnorm_qkv_rope", "gemv_rmsnorm_swiglu", "row_narrow_ss", "row_ss_partials",
           "sample_pick", "small_m_gemm", "small_m_gemm_residual", "small_m_gemm_swiglu", "ss_partials"]
