"""Where a planned index is searched when FAISS sees GPUs, and with which clamps.

The decision is a value (tested on CPU with pretend GPUs); `to_gpu` carries it out on a real one.
FAISS-GPU limits (faiss wiki, "Faiss on the GPU"): k and nprobe at most 2048; IVF-PQ codes of
1-4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64 or 96 bytes, with float16 lookup tables from 56
bytes up (the float32 tables no longer fit shared memory). An IVF-PQ's exact re-rank stays on the
CPU: its base goes to the GPU. HNSW stays on the CPU: FAISS-GPU has no HNSW, and CAGRA (cuVS)
builds its graph once and takes no incremental adds, while a served gallery takes live upserts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss

from facevoice.service.gallery import GPU_MAX_K, BuildPlan

GPU_PQ_SIZES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
FLOAT16_TABLES_FROM = 56
GPU_FILL = 0.8  # at most this share of a GPU's memory for one index (search buffers need the rest)


@dataclass(frozen=True)
class Placement:
    device: str  # cpu | gpu
    how: str  # what runs where, in a few words
    shards: int = 0  # GPUs the index is split over (0: replicated / none)
    float16_tables: bool = False
    clamps: dict = field(default_factory=dict)  # setting -> value it was clamped to


def place(plan: BuildPlan, size: int, ngpu: int, gpu_bytes: int = 80 * 10**9) -> Placement:
    """Where `plan` is searched on a host with `ngpu` GPUs of `gpu_bytes` each."""
    if ngpu <= 0:
        return Placement("cpu", "no GPU")
    name = plan.name or {"ivf": "ivf-flat"}.get(plan.kind, plan.kind)
    if name == "hnsw":
        why = "CAGRA takes no live upserts" if hasattr(faiss, "GpuIndexCagra") else "this faiss has no cuVS"
        return Placement("cpu", f"HNSW has no FAISS-GPU index ({why})")
    clamps = {}
    if int(plan.params.get("nprobe", 0)) > GPU_MAX_K:
        clamps["nprobe"] = GPU_MAX_K
    pq = int(plan.params.get("pq", 0))
    if pq and pq not in GPU_PQ_SIZES:
        return Placement("cpu", f"PQ{pq} codes are not a FAISS-GPU size")
    need = plan.bytes_per_item * size if plan.bytes_per_item else 4 * 128 * size
    fits = GPU_FILL * gpu_bytes
    shards = 0
    if need > fits:
        if need > fits * ngpu:
            return Placement("cpu", f"{need / 1e9:.1f} GB does not fit {ngpu} GPU(s) of {gpu_bytes / 1e9:.0f} GB")
        shards = ngpu
    how = {"flat": "GpuIndexFlat", "ivf-flat": "GpuIndexIVFFlat", "ivf-fp16": "GpuIndexIVFScalarQuantizer fp16",
           "ivf-sq8": "GpuIndexIVFScalarQuantizer 8-bit",
           "ivf-pq": "GpuIndexIVFPQ base, exact re-rank on the CPU"}[name]
    if shards:
        how += f", sharded over {shards} GPUs"
    return Placement("gpu", how, shards, float16_tables=pq >= FLOAT16_TABLES_FROM, clamps=clamps)


def to_gpu(index: faiss.Index, placement: Placement) -> faiss.Index:
    """The GPU copy of a CPU index, as `placement` says (needs faiss-gpu and a GPU)."""
    co = faiss.GpuMultipleClonerOptions()
    co.shard = placement.shards > 1
    co.useFloat16LookupTables = placement.float16_tables
    refine = faiss.downcast_index(index)
    if isinstance(refine, faiss.IndexRefine):
        base = faiss.index_cpu_to_all_gpus(refine.base_index, co=co)
        out = faiss.IndexRefine(base, refine.refine_index)
        out.k_factor = refine.k_factor
        out.own_fields = False
        out.referenced_objects = [base, refine]  # keep both alive as long as the wrapper
    else:
        out = faiss.index_cpu_to_all_gpus(index, co=co)
    if "nprobe" in placement.clamps:
        faiss.GpuParameterSpace().set_index_parameter(out, "nprobe", placement.clamps["nprobe"])
    return out
