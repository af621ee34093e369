#!/usr/bin/env python3
"""bench_cuda.py — hashattn's CUDA decode step against dense decode attention, side by side in one
process on one GPU (SPEC §4).

Dense baselines: PyTorch SDPA with the cuDNN and with the flash backend (enable_gqa=True), and the
byte floor (K and V bytes ÷ the copy bandwidth measured here). hashattn: one ha_decode_step (encode
the new key and the queries, match, attend) through ctypes on torch's tensors and torch's current
stream; its own byte floor counts the key codes and the kept K, V rows. Every contender is timed
called directly ("eager", host overhead included where the GPU waits for it) and replayed from a
CUDA graph; the speedups compare graph replays. Times are medians of CUDA-event timings, each
repetition on the next of several input sets whose total exceeds the L2 cache. Graph replays are
also timed "held" (the GPU kept busy by a spin while the host enqueues the timed replay, so the
events bracket its device time without the host's launch latency; "held_speedup_*"), and a
one-element add is timed both ways (info "launch_floor_us", "launch_floor_held_us"): the part of a
small step's time that is the timing's own.

Shapes: Llama-3.1-8B decode (Hq 32, Hkv 8, d 128, bf16), B × n from --batches / --lengths (or the
list --shapes), 32× and 16× sparsity (heavy = n/32, n/16; sink 128, local 128), paper and group
mode; random mapping MLPs of depth 3 (128→128→128→32) from tools/ha-make-weights. --config paper
is the HashAttention paper's benchmark configuration instead: MHA (Hq = Hkv = 32), fp16 Q, K, V and
output, top-k n/32 (heavy = n/32, sink and local 128 as above), one mode (with MHA the paper's
per-head selection and group mode coincide), B × n 1×8K, 1×128K, 16×32K unless --shapes says.

With --stages, each stage is also timed alone (graph replays of ha_encode_queries, of
ha_cache_encode_keys for the step's one new key, of ha_match and of ha_attend) against its own byte
floor: the MLP parameters for an encode, the key codes for match, the kept K, V rows for attend.
With --profile, only the hashattn steps of each shape run, twice, between cudaProfilerStart and
cudaProfilerStop (for ncu --profile-from-start off); nothing is timed.

    python3 bench/bench_cuda.py --build BUILD_DIR [--json results_cuda.json] [--png results_cuda.png]
"""
import argparse
import ctypes as C
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HQ, HKV, D, BITS = 32, 8, 128, 32
SINK, LOCAL = 128, 128
HA_F16, HA_BF16 = 1, 2
DTYPE, HA_DTYPE = torch.bfloat16, HA_BF16  # of Q, K, V and the output
# --config: (Hq, Hkv, torch dtype, ha dtype, default modes, default sparsities, default shapes)
CONFIGS = {
    "llama": (32, 8, torch.bfloat16, HA_BF16, "paper,group", "32,16", None),
    "paper": (32, 32, torch.float16, HA_F16, "paper", "32", "1x8192,1x131072,16x32768"),
}


# ---- the public API through ctypes (structures as in include/hashattn.h) ------------------------

class RuntimeOptions(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("backend", C.c_char_p), ("device", C.c_int32)]


class PlanConfig(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("max_batch", C.c_int32), ("max_tokens", C.c_int64),
                ("num_q_heads", C.c_int32), ("num_kv_heads", C.c_int32), ("head_dim", C.c_int32),
                ("sink", C.c_int32), ("local", C.c_int32), ("heavy_fraction", C.c_double),
                ("heavy_count", C.c_int64), ("scale", C.c_float)]


class CacheConfig(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("page_size", C.c_int32), ("max_batch", C.c_int32),
                ("max_tokens", C.c_int64), ("num_pages", C.c_int64)]


class Tensor3(C.Structure):
    _fields_ = [("data", C.c_void_p), ("dtype", C.c_int), ("stride_batch", C.c_int64), ("stride_head", C.c_int64)]


class Kv(C.Structure):
    _fields_ = [("k", C.c_void_p), ("v", C.c_void_p), ("dtype", C.c_int), ("stride_seq", C.c_int64),
                ("stride_token", C.c_int64), ("stride_head", C.c_int64), ("page_size", C.c_int32),
                ("block_table_stride", C.c_int32), ("block_table", C.c_void_p), ("capacity", C.c_int64)]


class Step(C.Structure):
    _fields_ = [("batch", C.c_int32), ("seq_lens", C.c_void_p), ("new_tokens", C.c_int32), ("q", Tensor3),
                ("kv", Kv), ("out", Tensor3), ("lse", C.c_void_p), ("stream", C.c_void_p)]


class Lib:
    def __init__(self, build):
        os.environ["HASHATTN_PLUGIN_PATH"] = os.path.join(build, "plugins", "cuda")
        self.h = C.CDLL(os.path.join(build, "core", "libhashattn.so"))
        h = self.h
        h.ha_last_error.restype = C.c_char_p
        h.ha_runtime_backend_description.restype = C.c_char_p
        h.ha_plan_max_kept.restype = C.c_int64
        h.ha_plan_kept_for_length.restype = C.c_int64
        h.ha_plan_kept_for_length.argtypes = [C.c_void_p, C.c_int64]
        h.ha_plan_config_init.argtypes = [C.POINTER(PlanConfig), C.c_int32, C.c_int64, C.c_int32, C.c_int32, C.c_int32]
        h.ha_cache_encode_keys.argtypes = [C.c_void_p, C.c_void_p, C.c_int32, C.POINTER(Kv), C.c_int32, C.c_void_p,
                                           C.c_int32, C.c_void_p]
        h.ha_decode_step.argtypes = [C.c_void_p, C.c_void_p, C.c_int32, C.POINTER(Step)]
        h.ha_encode_queries.argtypes = [C.c_void_p, C.c_int32, C.POINTER(Tensor3), C.c_int32, C.c_void_p, C.c_void_p]
        h.ha_match.argtypes = [C.c_void_p, C.c_void_p, C.c_int32, C.c_void_p, C.POINTER(Kv), C.c_int32, C.c_void_p,
                               C.c_void_p, C.c_void_p, C.c_void_p]
        h.ha_attend.argtypes = [C.c_void_p, C.POINTER(Tensor3), C.POINTER(Kv), C.c_int32, C.c_void_p, C.c_void_p,
                                C.c_void_p, C.POINTER(Tensor3), C.c_void_p, C.c_void_p]
        h.ha_plan_selection_heads.restype = C.c_int32
        h.ha_plan_selection_heads.argtypes = [C.c_void_p]
        h.ha_plan_max_kept.argtypes = [C.c_void_p]
        for f in ("ha_plan_destroy", "ha_cache_destroy", "ha_weights_free", "ha_runtime_close"):
            getattr(h, f).argtypes = [C.c_void_p]

    def ok(self, status, what):
        if status != 0:
            raise RuntimeError(f"{what}: status {status}: {self.h.ha_last_error().decode()}")


# ---- inputs --------------------------------------------------------------------------------------

class Shape:
    def __init__(self, batch, n, mode, sparsity):
        self.batch, self.n, self.mode, self.sparsity = batch, n, mode, sparsity

    def name(self):
        return f"B{self.batch} n{self.n // 1024}K {self.mode} 1/{self.sparsity}"


class InputSet:
    """One set of Q, K, V, lengths, output, and (for hashattn) a key-code cache filled by a prefill."""

    def __init__(self, lib, rt, weights, plan, shape, stream):
        b, n = shape.batch, shape.n
        self.q = torch.randn(b, HQ, D, device="cuda", dtype=DTYPE)
        self.k = torch.randn(b, HKV, n, D, device="cuda", dtype=DTYPE)
        self.v = torch.randn(b, HKV, n, D, device="cuda", dtype=DTYPE)
        self.out = torch.empty(b, HQ, D, device="cuda", dtype=DTYPE)
        self.lens = torch.full((b,), n, device="cuda", dtype=torch.int32)
        self.lib = lib
        self.kv = Kv(self.k.data_ptr(), self.v.data_ptr(), HA_DTYPE, HKV * n * D, D, n * D, 0, 0, None, n)
        cc = CacheConfig(C.sizeof(CacheConfig), 0, b, n, 0)
        self.cache = C.c_void_p()
        lib.ok(lib.h.ha_cache_create(rt, weights, C.byref(cc), C.byref(self.cache)), "ha_cache_create")
        prompt = self.lens - 1  # the step encodes the last key itself
        lib.ok(lib.h.ha_cache_encode_keys(plan, self.cache, 0, C.byref(self.kv), b, C.c_void_p(prompt.data_ptr()),
                                          n - 1, C.c_void_p(stream)), "ha_cache_encode_keys")
        torch.cuda.synchronize()
        self.step = Step(b, self.lens.data_ptr(), 1, Tensor3(self.q.data_ptr(), HA_DTYPE, HQ * D, D), self.kv,
                         Tensor3(self.out.data_ptr(), HA_DTYPE, HQ * D, D), None, None)

    def hash_step(self, plan):
        self.step.stream = torch.cuda.current_stream().cuda_stream
        self.lib.ok(self.lib.h.ha_decode_step(plan, self.cache, 0, C.byref(self.step)), "ha_decode_step")

    def stage_buffers(self, plan):
        """Scratch of the stages run one by one: query codes, indices, counts."""
        b = self.step.batch
        sel, kept = self.lib.h.ha_plan_selection_heads(plan), self.lib.h.ha_plan_max_kept(plan)
        self.codes = torch.empty(b * HQ * ((BITS + 31) // 32), device="cuda", dtype=torch.int32)
        self.indices = torch.empty(b * sel * kept, device="cuda", dtype=torch.int32)
        self.counts = torch.empty(b * sel, device="cuda", dtype=torch.int32)

    def stage_fns(self, plan):
        """The four stages of a step, each alone: (name, function)."""
        h, st, stream = self.lib.h, self.step, lambda: C.c_void_p(torch.cuda.current_stream().cuda_stream)
        lens, codes = C.c_void_p(self.lens.data_ptr()), C.c_void_p(self.codes.data_ptr())
        idx, cnt = C.c_void_p(self.indices.data_ptr()), C.c_void_p(self.counts.data_ptr())
        return [
            ("encode_q", lambda: self.lib.ok(h.ha_encode_queries(plan, 0, C.byref(st.q), st.batch, codes, stream()),
                                             "ha_encode_queries")),
            ("encode_k", lambda: self.lib.ok(h.ha_cache_encode_keys(plan, self.cache, 0, C.byref(self.kv), st.batch,
                                                                    lens, 1, stream()), "ha_cache_encode_keys")),
            ("match", lambda: self.lib.ok(h.ha_match(plan, self.cache, 0, codes, C.byref(self.kv), st.batch, lens, idx,
                                                     cnt, stream()), "ha_match")),
            ("attend", lambda: self.lib.ok(h.ha_attend(plan, C.byref(st.q), C.byref(self.kv), st.batch, lens, idx, cnt,
                                                       C.byref(st.out), None, stream()), "ha_attend")),
        ]

    def sdpa(self):
        return F.scaled_dot_product_attention(self.q.unsqueeze(2), self.k, self.v, enable_gqa=HQ != HKV)

    def free(self):
        self.lib.h.ha_cache_destroy(self.cache)


# ---- timing ----------------------------------------------------------------------------------------

# A GPU spin of this many cycles (~100 µs at 2 GHz) before each timed call when held=True: the host
# then enqueues the start event, the call and the end event while the GPU is still spinning, so the
# events bracket the call's time on the device alone, without the host's launch latency (nvbench's
# "blocking kernel"). The default timing (held=False) keeps that latency in, as a host that launches
# one step at a time sees it.
HOLD_CYCLES = 200_000


def time_calls(fns, reps, warmup=3, held=False):
    """Median µs of fn() over reps calls, call i on fns[i % len(fns)], each between CUDA events."""
    for i in range(warmup * len(fns)):
        fns[i % len(fns)]()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for i, (start, end) in enumerate(events):
        if held:
            torch.cuda._sleep(HOLD_CYCLES)
        start.record()
        fns[i % len(fns)]()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) * 1e3 for s, e in events)


def graphs_of(fns):
    """One CUDA graph per function (captured on a side stream, as torch requires); their replays."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graphs = []
    for fn in fns:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        graphs.append(g)
    return graphs, [g.replay for g in graphs]


def graph_time(fns, reps):
    """(graph-replay µs, held graph-replay µs) of the functions (medians over reps replays, rotating as
    time_calls does)."""
    graphs, replays = graphs_of(fns)
    return time_calls(replays, reps), time_calls(replays, reps, held=True)


def launch_floor():
    """(graph-replay µs, held graph-replay µs) of a one-element add: what the timing itself costs."""
    one = torch.zeros(1, device="cuda")
    return graph_time([lambda: one.add_(1)], 50)


def mlp_param_bytes():
    """fp32 parameters of one head of the benchmark's mapping MLP (128→128→128→32, weights + biases)."""
    dims = [D, 128, 128, BITS]
    return 4 * sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(len(dims) - 1))


def copy_bandwidth():
    """Device-to-device copy bandwidth (bytes read + written per second), copying 1 GiB."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = time_calls([lambda: b.copy_(a)], 20)
    del a, b
    return 2 * (1 << 30) / (us * 1e-6)


def sdpa_runner(backend, sets):
    def run(s):
        def f():
            with sdpa_kernel(backend):
                s.sdpa()
        return f
    return [run(s) for s in sets]


# ---- one (mode, B, n): input sets shared by the sparsities -------------------------------------------

def plan_for(lib, rt, weights, b, n, sparsity):
    cfg = PlanConfig()
    lib.h.ha_plan_config_init(C.byref(cfg), b, n, HQ, HKV, D)
    cfg.sink, cfg.local, cfg.heavy_fraction = SINK, LOCAL, 1.0 / sparsity
    plan = C.c_void_p()
    lib.ok(lib.h.ha_plan_create(rt, weights, C.byref(cfg), C.byref(plan)), "ha_plan_create")
    return plan


def timed(fns, reps):
    """(eager µs, graph-replay µs, held graph-replay µs) of the functions, each a median over reps calls."""
    return (time_calls(fns, reps), *graph_time(fns, reps))


def bench_length(lib, rt, weights, mode, b, n, sparsities, bw, l2, reps, stages=False, profile=False):
    code_heads = HQ if mode == "paper" else HKV
    kv_bytes = 2 * b * HKV * n * D * 2
    set_bytes = kv_bytes + b * code_heads * n * 4
    count = max(1, min(8, math.ceil(3 * l2 / set_bytes)))
    count = max(1, min(count, int(0.8 * torch.cuda.mem_get_info()[0] // set_bytes)))
    stream = torch.cuda.current_stream().cuda_stream
    prefill_plan = plan_for(lib, rt, weights, b, n, sparsities[0])
    sets = [InputSet(lib, rt, weights, prefill_plan, Shape(b, n, mode, 0), stream) for _ in range(count)]
    lib.h.ha_plan_destroy(prefill_plan)

    if profile:  # the hashattn steps alone, for a profiler; nothing timed
        for sp in sparsities:
            plan = plan_for(lib, rt, weights, b, n, sp)
            for s in sets:
                s.hash_step(plan)
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
            for _ in range(2):
                sets[0].hash_step(plan)
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            lib.h.ha_plan_destroy(plan)
        for s in sets:
            s.free()
        return []

    dense = {"dense_floor_us": kv_bytes / bw * 1e6}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            (dense[f"sdpa_{name}_eager_us"], dense[f"sdpa_{name}_us"],
             dense[f"sdpa_{name}_held_us"]) = timed(sdpa_runner(backend, sets), reps)
        except RuntimeError as e:  # a backend that refuses the shape
            dense[f"sdpa_{name}_us"] = dense[f"sdpa_{name}_held_us"] = None
            dense[f"sdpa_{name}_error"] = str(e).splitlines()[0]
    results = []
    for sp in sparsities:
        plan = plan_for(lib, rt, weights, b, n, sp)
        kept = lib.h.ha_plan_kept_for_length(plan, n)
        r = {"batch": b, "n": n, "mode": mode, "sparsity": sp, "kept": kept, "input_sets": count, **dense}
        # a step reads every token's code and the kept K, V rows (per query head in paper mode)
        r["hash_floor_us"] = (b * code_heads * n * 4 + b * code_heads * kept * D * 2 * 2) / bw * 1e6
        r["hash_eager_us"], r["hash_graph_us"], r["hash_held_us"] = timed(
            [lambda s=s: s.hash_step(plan) for s in sets], reps)
        for name in ("cudnn", "flash"):
            t = r.get(f"sdpa_{name}_us")
            r[f"speedup_vs_{name}"] = t / r["hash_graph_us"] if t else None
            t = r.get(f"sdpa_{name}_held_us")
            r[f"held_speedup_vs_{name}"] = t / r["hash_held_us"] if t else None
        if stages:
            sel = lib.h.ha_plan_selection_heads(plan)
            # an encode reads each head's MLP once for the whole batch
            floors = {"encode_q": HQ * mlp_param_bytes(), "encode_k": code_heads * mlp_param_bytes(),
                      "match": b * code_heads * n * 4, "attend": b * sel * kept * D * 2 * 2}
            for s in sets:
                s.stage_buffers(plan)
            per_set = [s.stage_fns(plan) for s in sets]
            for i, (name, _) in enumerate(per_set[0]):
                r[f"stage_{name}_us"], r[f"stage_{name}_held_us"] = graph_time([fns[i][1] for fns in per_set], reps)
                r[f"stage_{name}_floor_us"] = floors[name] / bw * 1e6
        lib.h.ha_plan_destroy(plan)
        results.append(r)
    for s in sets:
        s.free()
    del sets
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return results


def make_weights(build, mode, path):
    subprocess.run([os.path.join(build, "tools", "ha-make-weights"), "--out", path, "--layers", "1",
                    "--q-heads", str(HQ), "--k-heads", str(HQ if mode == "paper" else HKV), "--head-dim", str(D),
                    "--bits", str(BITS), "--depth", "3", "--seed", "7"], check=True)


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, mode in zip(axes, ("paper", "group")):
        for (b, sp), marker in zip(sorted({(r["batch"], r["sparsity"]) for r in results}), "os^vD<>ph*"):
            rows = sorted((r for r in results if r["mode"] == mode and r["batch"] == b and r["sparsity"] == sp
                           and r.get("speedup_vs_cudnn")), key=lambda r: r["n"])
            if rows:
                ax.plot([r["n"] for r in rows], [r["speedup_vs_cudnn"] for r in rows], marker=marker,
                        label=f"B={b}, 1/{sp}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{mode} mode: hashattn step (graph) vs cuDNN SDPA")
        ax.set_xlabel("sequence length n")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("speedup (dense time / hashattn time)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", required=True, help="meson build directory (with the cuda plugin)")
    ap.add_argument("--json", default="results_cuda.json")
    ap.add_argument("--png", default=None, help="plot of the speedups (needs matplotlib)")
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--lengths", default="8192,32768,131072,524288")
    ap.add_argument("--shapes", default=None, help="B×n pairs, e.g. 1x8192,16x32768 (instead of batches × lengths)")
    ap.add_argument("--stages", action="store_true", help="also time each stage alone against its byte floor")
    ap.add_argument("--profile", action="store_true", help="run only the hashattn steps, inside cudaProfilerStart/Stop")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="llama",
                    help="llama: Hq 32, Hkv 8, bf16; paper: the paper's MHA 32 heads, fp16, top-k n/32")
    ap.add_argument("--modes", default=None, help="paper,group (default: the config's)")
    ap.add_argument("--sparsities", default=None, help="e.g. 32,16 (default: the config's)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--max-kv-gib", type=float, default=40.0, help="skip shapes whose K+V exceed this")
    args = ap.parse_args()
    global HQ, HKV, DTYPE, HA_DTYPE
    HQ, HKV, DTYPE, HA_DTYPE, modes, sparsities, shapes = CONFIGS[args.config]
    args.modes = args.modes or modes
    args.sparsities = args.sparsities or sparsities
    args.shapes = args.shapes or shapes

    torch.manual_seed(0)
    torch.cuda.init()
    props = torch.cuda.get_device_properties(0)
    lib = Lib(os.path.abspath(args.build))
    rt = C.c_void_p()
    opts = RuntimeOptions(C.sizeof(RuntimeOptions), b"cuda", torch.cuda.current_device())
    lib.ok(lib.h.ha_runtime_open(C.byref(opts), C.byref(rt)), "ha_runtime_open")
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    bw = copy_bandwidth()
    info = {"device": props.name, "backend": lib.h.ha_runtime_backend_description(rt).decode(),
            "torch": torch.__version__, "copy_bandwidth_GBps": bw / 1e9, "l2_bytes": l2, "config": args.config,
            "q_heads": HQ, "kv_heads": HKV, "dtype": str(DTYPE).replace("torch.", "")}
    info["launch_floor_us"], info["launch_floor_held_us"] = launch_floor()
    print(f"{info['device']}: copy {bw / 1e9:.0f} GB/s, L2 {l2 >> 20} MiB; hashattn: {info['backend']}", flush=True)
    print(f"a one-element add, graph replay: {info['launch_floor_us']:.1f} µs ({info['launch_floor_held_us']:.1f} µs "
          "held: the host's launch latency off the clock)", flush=True)

    results = []
    tmp = tempfile.mkdtemp()
    weights = {}
    for mode in args.modes.split(","):
        wpath = os.path.join(tmp, f"{mode}.safetensors")
        make_weights(os.path.abspath(args.build), mode, wpath)
        weights[mode] = C.c_void_p()
        lib.ok(lib.h.ha_weights_load(rt, wpath.encode(), C.byref(weights[mode])), "ha_weights_load")
    sparsities = [int(x) for x in args.sparsities.split(",")]
    fmt = lambda x: f"{x:8.1f}" if x else "     n/a"
    if args.shapes:
        shapes = [tuple(int(x) for x in pair.split("x")) for pair in args.shapes.split(",")]
    else:
        shapes = [(b, n) for b in map(int, args.batches.split(",")) for n in map(int, args.lengths.split(","))]
    for b, n in shapes:
        if 2 * b * HKV * n * D * 2 > args.max_kv_gib * (1 << 30):
            continue
        for mode, w in weights.items():
            try:
                rows = bench_length(lib, rt, w, mode, b, n, sparsities, bw, l2, args.reps, args.stages,
                                    args.profile)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
                print(f"B{b} n{n} {mode}: FAILED: {e}", flush=True)
                results.append({"batch": b, "n": n, "mode": mode, "error": str(e)})
                torch.cuda.empty_cache()
                continue
            results.extend(rows)
            for r in rows:
                name = Shape(b, n, mode, r["sparsity"]).name()
                print(f"{name:24s} cudnn {fmt(r['sdpa_cudnn_us'])}  flash {fmt(r['sdpa_flash_us'])}  "
                      f"floor {r['dense_floor_us']:7.1f} | hash {r['hash_graph_us']:7.1f} (eager "
                      f"{r['hash_eager_us']:7.1f})  floor {r['hash_floor_us']:6.1f} | "
                      f"x{r['speedup_vs_cudnn'] or 0:5.2f} vs cudnn", flush=True)
                print(f"    held (device time only): cudnn {fmt(r['sdpa_cudnn_held_us'])}  hash "
                      f"{r['hash_held_us']:7.1f} | x{r['held_speedup_vs_cudnn'] or 0:5.2f} vs cudnn", flush=True)
                if "stage_attend_us" in r:
                    print("    stages µs (floor): " + "  ".join(
                        f"{k} {r[f'stage_{k}_us']:.1f} ({r[f'stage_{k}_floor_us']:.1f})"
                        for k in ("encode_q", "encode_k", "match", "attend")), flush=True)
                    print("    stages held µs: " + "  ".join(
                        f"{k} {r[f'stage_{k}_held_us']:.1f}" for k in ("encode_q", "encode_k", "match", "attend")),
                        flush=True)
            with open(args.json, "w") as f:  # after every shape: a run cut short keeps what it measured
                json.dump({"info": info, "results": results}, f, indent=1)
    for w in weights.values():
        lib.h.ha_weights_free(w)
    lib.h.ha_runtime_close(rt)
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    sys.exit(main())
