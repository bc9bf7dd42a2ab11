"""Every CUDA path of the engine, on one GPU, in one script, with a report.

    python benchmarks/gpu_check.py [--out DIR] [--dry-run]

Runs, in order (each check on its own: one failing does not stop the others):

  versions       python, torch, CUDA, cuDNN, NCCL, driver; the GPU, its compute capability and
                 the precision "auto" picks on it
  nvml           NVML's UUIDs against torch's, and the panel's mapping (engine/memory.py);
                 one real answer of every NVML call the memory panel makes, printed
                 (skipped, with the reason, where there is no NVML)
  cli_runs       1-epoch CLI runs of the sample preset in auto, fp16 (update_freq=2,
                 clip_norm=1) and fp32: status, losses, precision, TF32, allocator notice
  resume         the GPU run's checkpoint resumed on the CPU, then back on the GPU
  attention      SDPA forward and backward at our shapes with the math kernel disabled (a
                 fallback raises), default and no-cudnn, the kernels chosen (profiler names)
  attention_backends
                 each SDPA kernel alone (math, flash, efficient, cuDNN) on padded batches at
                 lengths up to 256 with a key padding mask, forward and backward: NaN/inf and
                 the largest difference against the math kernel; when cuDNN passes every case
                 the proof that lets training.attention = "auto" use it on sm90+ is written
                 (engine/device.py attention_proof_path; CUDA only)
  syncs          torch.cuda.set_sync_debug_mode("warn") over an epoch: syncs per batch, where
  base_step      Transformer-base, max_tokens 25000, bf16 (fp16 before sm80), 20 steps through
                 the engine's own step: tokens/s, MFU, peak memory, GPU idle gaps
  base_compile   the same with training.compile off and on: tokens/s, MFU, compile seconds,
                 graphs compiled (recompilations); CUDA only
  forced_oom     set_per_process_memory_fraction so batches do not fit: every one skipped,
                 memory back to its baseline, the run ends after max_bad_batches in one line
  fit            engine.fit.fit on the device and a short run at its recommendation
  torchrun_nccl  a 1-process torchrun job (NCCL on a GPU) training one epoch
  ddp_vs_hand    benchmarks/bench_ddp.py on 2 GPUs: the hand gradient averaging against
                 DistributedDataParallel (when torch.cuda.device_count() >= 2)

Only the sample preset and synthetic batches: no network. Under 6 minutes on one GPU.
Without CUDA, or with --dry-run, CUDA-only checks are skipped with the reason and the others
run small (tests/test_gpu_check.py runs this dry mode, so the script keeps working).

Writes DIR/gpu_check.json (everything measured) and DIR/gpu_check.md (a summary, also printed).
Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere: `python benchmarks/gpu_check.py`

import torch  # noqa: E402

from engine.eventlog import read_events  # noqa: E402
from engine.events import (  # noqa: E402
    BatchProgress,
    BatchSkipped,
    EpochSummary,
    Notice,
    RunFailed,
    RunFinished,
    StageFinished,
    StageStarted,
)

# the sample preset shrunk to seconds, for the dry mode on a CPU
SMALL = ["data.train_size=300", "data.valid_size=30", "data.test_size=10",
         "tokenizer.vocab_size=300", "tokenizer.min_frequency=1", "model.d_model=32",
         "model.ffn_hidden=64", "model.n_head=2", "model.n_layers=1", "training.max_tokens=500",
         "eval.bleu_every=1", "eval.bleu_samples=5", "eval.beam=2", "eval.max_len_offset=5"]
# on a GPU: the sample preset itself, one epoch, BLEU on 100 sentences (decoding runs too)
FULL = ["eval.bleu_every=1", "eval.bleu_samples=100"]


class Skip(Exception):
    """A check that cannot run here; its message says why."""


class Context:
    def __init__(self, out: Path, dry: bool) -> None:
        self.out = out
        self.cuda = torch.cuda.is_available() and not dry
        self.small = not self.cuda
        self.runs = out / "runs"
        self.results: dict[str, dict] = {}

    def need_cuda(self, what: str) -> None:
        if not self.cuda:
            raise Skip(f"needs CUDA ({what}); "
                       + ("--dry-run" if torch.cuda.is_available() else "no CUDA device here"))

    def preset_overrides(self, *extra: str) -> list[str]:
        items = (SMALL if self.small else FULL) + ["training.epochs=1"] + list(extra)
        return [arg for item in items for arg in ("--set", item)]

    def env(self, **changes: str) -> dict[str, str]:
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if self.small:
            env["OMP_NUM_THREADS"] = "1"
        env.update(changes)
        return env


def cli(ctx: Context, run_dir: Path, *args: str, launcher: list[str] | None = None,
        env: dict[str, str] | None = None, timeout: float = 240) -> dict:
    """One `python -m engine` run; what its events.jsonl says."""
    command = (launcher or [sys.executable]) + ["-m", "engine", "--preset", "sample",
                                                 "--run-dir", str(run_dir), *args]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=env or ctx.env(), cwd=ROOT)
    summary = summarize_events(run_dir / "events.jsonl")
    summary.update(exit_code=done.returncode, seconds=round(time.monotonic() - started, 1))
    if done.returncode != 0:
        summary["output_tail"] = (done.stdout + done.stderr)[-1500:]
    return summary


def summarize_events(path: Path) -> dict:
    if not path.is_file():
        return {"status": "no events.jsonl"}
    events = list(read_events(path))
    finished = [e for e in events if isinstance(e, RunFinished)]
    failed = [e for e in events if isinstance(e, RunFailed)]
    epochs = [e for e in events if isinstance(e, EpochSummary)]
    progress = [e for e in events if isinstance(e, BatchProgress)]
    model = [e.info for e in events if isinstance(e, StageFinished) and e.stage == "model"]
    return {
        "status": finished[-1].status if finished else ("failed" if failed else "unknown"),
        "failure": failed[-1].message if failed else None,
        "model": model[-1] if model else None,
        "epochs": [{"epoch": e.epoch, "train_loss": round(e.train_loss, 4),
                    "val_loss": round(e.val_loss, 4), "bleu": e.bleu,
                    "seconds": e.epoch_seconds} for e in epochs],
        "last_progress": None if not progress else {
            "step": progress[-1].step, "tokens_per_second": progress[-1].tokens_per_second,
            "gnorm": progress[-1].gnorm, "loss_scale": progress[-1].loss_scale},
        "skipped": Counter(e.reason for e in events if isinstance(e, BatchSkipped)),
        "notices": [e.text for e in events if isinstance(e, Notice)],
    }


# --- the checks ------------------------------------------------------------------------------


def check_versions(ctx: Context) -> dict:
    from engine.device import precision_for

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda, "host": platform.node(),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
            else None}
    if not ctx.cuda:
        info["gpu"] = None
        return info
    try:
        version = torch.cuda.nccl.version()
        info["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    except Exception as exc:
        info["nccl"] = f"n/a ({exc})"
    props = torch.cuda.get_device_properties(0)
    capability = (props.major, props.minor)
    info.update(gpu=props.name, gpus=torch.cuda.device_count(),
                memory_gib=round(props.total_memory / 2**30, 1),
                compute_capability=f"{props.major}.{props.minor}",
                auto_precision=precision_for("auto", "cuda", capability),
                bf16_supported_by_torch=torch.cuda.is_bf16_supported())
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
    except Exception as exc:
        info["driver"] = f"n/a ({exc})"
    return info


def check_nvml(ctx: Context) -> dict:
    from engine.memory import MemoryProbe, _torch_uuids, visible_devices

    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        raise Skip(f"no NVML here ({type(exc).__name__}: {exc})") from None
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    nvml = [u.decode() if isinstance(u, bytes) else u
            for u in (pynvml.nvmlDeviceGetUUID(h) for h in handles)]
    result = {"nvml_uuids": nvml, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if ctx.cuda:
        torch.zeros(1, device="cuda")  # CUDA up, as in a training process
        torch_uuids = _torch_uuids()
        result["torch_uuids"] = torch_uuids
        mapping = visible_devices(nvml, torch_uuids, os.environ.get("CUDA_VISIBLE_DEVICES"))
        result["mapping"] = mapping
        if len(mapping) != torch.cuda.device_count():
            raise AssertionError(f"{len(mapping)} of {torch.cuda.device_count()} visible GPUs "
                                 f"matched by UUID: {result}")
    probe = MemoryProbe()
    result["panel_devices"] = probe.sample().devices
    probe.close()
    if not ctx.cuda:  # the dry mode: the panel's calls are for a lent GPU
        result["panel_calls"] = "skipped: the dry mode reads no GPU"
        print("  nvml: the memory panel's NVML calls skipped (dry mode)", flush=True)
        return result
    result["panel_calls"] = nvml_panel_calls(pynvml, handles)
    for name, answer in result["panel_calls"].items():  # one real reading of each, printed
        print(f"  nvml {name}: {answer}", flush=True)
    return result


def nvml_panel_calls(pynvml, handles: list) -> dict:
    """One real answer (or the NVMLError) of every NVML call the memory panel makes
    (engine/memory.py), on every GPU, by call name: what a driver, a MIG setup or a container
    answers is seen here, not guessed."""

    def answer(call):
        try:
            value = call()
        except Exception as exc:  # a call that fails is the finding: the panel shows n/a
            return f"{type(exc).__name__}: {exc}"
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, list):  # process infos
            return [{k: getattr(p, k, None) for k in ("pid", "usedGpuMemory", "gpuInstanceId",
                                                      "computeInstanceId")} for p in value]
        if hasattr(value, "_fields_") or type(value).__name__.startswith("c_nvml") or \
                hasattr(value, "used") or hasattr(value, "gpu"):
            return {k: getattr(value, k) for k in ("total", "used", "free", "gpu", "memory")
                    if hasattr(value, k)}
        return value

    calls = {"nvmlDeviceGetCount": answer(pynvml.nvmlDeviceGetCount)}
    for i, h in enumerate(handles):
        calls[f"nvmlDeviceGetHandleByIndex({i})"] = answer(
            lambda: str(pynvml.nvmlDeviceGetHandleByIndex(i)))
        for name in ("nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetMemoryInfo",
                     "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetComputeRunningProcesses_v3",
                     "nvmlDeviceGetComputeRunningProcesses_v2",
                     "nvmlDeviceGetComputeRunningProcesses"):
            call = getattr(pynvml, name, None)
            calls[f"{name}({i})"] = "not in this pynvml" if call is None else answer(
                lambda: call(h))
    calls["nvmlSystemGetProcessName(own pid)"] = answer(
        lambda: pynvml.nvmlSystemGetProcessName(os.getpid()))
    return calls


def check_cli_runs(ctx: Context) -> dict:
    runs = {"auto": ["training.precision=\"auto\""],
            "fp16": ["training.precision=\"fp16\"", "training.update_freq=2",
                     "training.clip_norm=1.0"],
            "fp32": ["training.precision=\"fp32\""]}
    results = {}
    for name, settings in runs.items():
        if name == "fp16" and not ctx.cuda:
            results[name] = {"status": "skipped", "reason": "fp16 needs CUDA"}
            continue
        results[name] = cli(ctx, ctx.runs / name, *ctx.preset_overrides(*settings))
    return all_finished(results, "runs")


def check_resume(ctx: Context) -> dict:
    source = ctx.runs / "auto"
    if not (source / "checkpoint_last.pt").is_file():
        raise Skip("the cli_runs check left no checkpoint to resume")
    on_cpu = ctx.runs / "resume-cpu"
    shutil.rmtree(on_cpu, ignore_errors=True)
    shutil.copytree(source, on_cpu)
    result = {"cpu": cli(ctx, on_cpu, *ctx.preset_overrides(
        "training.epochs=2", "training.device=\"cpu\"", "training.precision=\"fp32\""),
        "--resume", "last", timeout=400)}
    if ctx.cuda:
        back = ctx.runs / "resume-gpu"
        shutil.rmtree(back, ignore_errors=True)
        shutil.copytree(on_cpu, back)
        result["gpu"] = cli(ctx, back, *ctx.preset_overrides("training.epochs=3"),
                            "--resume", "last")
    else:
        result["gpu"] = {"status": "skipped", "reason": "back on the GPU needs CUDA"}
    return all_finished(result, "resumes")


def all_finished(results: dict, what: str) -> dict:
    """``results`` (name -> a cli() result) when each finished or was skipped, else an error
    naming the others with their failure."""
    bad = {k: v.get("failure") or v.get("output_tail") for k, v in results.items()
           if v["status"] not in ("finished", "skipped")}
    if bad:
        raise AssertionError(f"{what} that did not finish: {bad}")
    return results


def check_attention(ctx: Context) -> dict:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    from engine.device import precision_for

    device = torch.device("cuda" if ctx.cuda else "cpu")
    if ctx.cuda:
        major, minor = torch.cuda.get_device_capability()
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
        if precision_for("auto", "cuda", (major, minor)) != "bf16":
            dtypes.pop("bf16")
        heads, head_dim, max_tokens, lengths = 8, 64, 25000, (7, 33, 100, 256)
    else:
        dtypes = {"fp32": torch.float32}
        heads, head_dim, max_tokens, lengths = 2, 16, 600, (7, 33)
    no_math = {"default": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                           SDPBackend.CUDNN_ATTENTION],
               "no-cudnn": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    results, failures = [], []
    for choice, backends in no_math.items():
        for dtype_name, dtype in dtypes.items():
            for length in lengths:
                rows = max(1, max_tokens // length)

                def t(size):
                    return torch.randn(rows, heads, size, head_dim, device=device, dtype=dtype,
                                       requires_grad=True)

                pad = torch.ones(rows, 1, 1, length, dtype=torch.bool, device=device)
                pad[::3, ..., max(1, length * 2 // 3):] = False  # a third of the rows padded
                cases = {
                    "encoder self, key padding mask": lambda: (t(length), t(length), t(length),
                                                               pad, False),
                    "decoder self, causal": lambda: (t(length), t(length), t(length), None, True),
                    "cross, key padding mask": lambda: (t(length + 1), t(length), t(length),
                                                        pad, False),
                }
                for case, make in cases.items():
                    q, k, v, mask, causal = make()
                    entry = {"backends": choice, "dtype": dtype_name, "rows": rows,
                             "length": length, "case": case}
                    try:
                        with profile(activities=activities) as prof, sdpa_kernel(backends):
                            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                 is_causal=causal)
                            out.float().square().mean().backward()
                        finite = all(bool(torch.isfinite(x.grad).all()) for x in (q, k, v))
                        # the ops and GPU kernels that ran, not the autograd bookkeeping
                        kernels = sorted({e.key for e in prof.key_averages()
                                          if any(w in e.key.lower() for w in (
                                              "flash", "fmha", "cudnn", "efficient", "attention"))
                                          and not e.key.startswith(("aten::scaled_dot_product_at",
                                                                    "autograd::"))
                                          and not e.key.endswith("Backward0")})
                        entry.update(ok=finite, kernels=kernels[:6])
                        if not finite:
                            failures.append(f"{choice} {dtype_name} L={length} {case}: "
                                            "NaN/inf gradients")
                    except RuntimeError as exc:  # no kernel without math: a fallback
                        entry.update(ok=False, error=str(exc).splitlines()[0][:200])
                        failures.append(f"{choice} {dtype_name} L={length} {case}: "
                                        f"{entry['error']}")
                    results.append(entry)
                    del q, k, v
    if failures:
        raise AssertionError("; ".join(failures[:6]))
    return {"cases": results}


# each kernel alone, against the math kernel in the same dtype: the largest gradient difference
# relative to the largest math gradient that still passes (bf16 keeps 8 bits of mantissa)
BACKEND_TOLERANCE = {"fp32": 1e-3, "fp16": 0.01, "bf16": 0.05}


def compare_backends(device: torch.device, dtype_name: str, lengths: tuple[int, ...],
                     heads: int, head_dim: int, max_tokens: int, backends: list[str]) -> list[dict]:
    """For each length, a padded batch of about ``max_tokens`` tokens through each of
    ``backends`` (SDPBackend names) alone: self and cross attention with a key padding mask
    (B, 1, 1, S), as the model passes it. One row per (backend, length, case): finite, the
    largest output and gradient difference against MATH (relative to MATH's largest value), ok;
    or ``ran: False`` with torch's reason where the kernel does not take these inputs."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]

    def run(backend: str, q0, k0, v0, mask, grad):
        q, k, v = (x.detach().clone().requires_grad_() for x in (q0, k0, v0))
        # a kernel that does not take these inputs warns why, then raises "no viable backend"
        with warnings.catch_warnings(record=True) as caught, \
                sdpa_kernel([getattr(SDPBackend, backend)]):
            warnings.simplefilter("always")
            try:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                out.backward(grad)
            except RuntimeError as exc:
                why = [str(w.message).splitlines()[0] for w in caught] or [str(exc)]
                raise RuntimeError("; ".join(why)) from None
        return [out.detach().float()] + [x.grad.float() for x in (q, k, v)]

    rows_out = []
    for length in lengths:
        rows = max(1, max_tokens // length)
        g = torch.Generator().manual_seed(length)
        # each sentence keeps between half and all of the positions: padding in most rows
        kept = torch.randint(max(1, length // 2), length + 1, (rows,), generator=g)
        mask = (torch.arange(length)[None, :] < kept[:, None])[:, None, None, :].to(device)
        for case, queries in (("self", length), ("cross", length + 1)):
            q, k, v = (torch.randn(rows, heads, n, head_dim, generator=g).to(device, dtype)
                       for n in (queries, length, length))
            grad = torch.randn(rows, heads, queries, head_dim, generator=g).to(device, dtype)
            reference = run("MATH", q, k, v, mask, grad)
            for backend in backends:
                row = {"backend": backend, "dtype": dtype_name, "length": length, "rows": rows,
                       "case": f"{case}, key padding mask"}
                try:
                    got = reference if backend == "MATH" else run(backend, q, k, v, mask, grad)
                except RuntimeError as exc:  # this kernel does not take these inputs here
                    row.update(ran=False, reason=str(exc).splitlines()[0][:240])
                    rows_out.append(row)
                    continue
                finite = all(bool(torch.isfinite(t).all()) for t in got)
                scale = [max(float(r.abs().max()), 1e-6) for r in reference]
                diffs = [float((a - r).abs().max()) / s if finite else float("inf")
                         for a, r, s in zip(got, reference, scale)]
                row.update(ran=True, finite=finite, max_out_diff=float(f"{diffs[0]:.3g}"),
                           max_grad_diff=float(f"{max(diffs[1:]):.3g}"),
                           ok=finite and max(diffs) <= BACKEND_TOLERANCE[dtype_name])
                rows_out.append(row)
    return rows_out


def check_attention_backends(ctx: Context) -> dict:
    ctx.need_cuda("the GPU's SDPA kernels, cuDNN's among them")
    from engine.device import attention_proof_key, attention_proof_path, precision_for

    capability = torch.cuda.get_device_capability()
    dtypes = ["bf16", "fp16"] if precision_for("auto", "cuda", capability) == "bf16" else ["fp16"]
    backends = ["MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"]
    cases = [row for dtype in dtypes for row in compare_backends(
        torch.device("cuda"), dtype, (16, 33, 64, 100, 128, 200, 256), heads=8, head_dim=64,
        max_tokens=25000, backends=backends)]
    cudnn = [row for row in cases if row["backend"] == "CUDNN_ATTENTION"]
    failed = [row for row in cases if row["ran"] and not row["ok"]]
    result = {"capability": f"{capability[0]}.{capability[1]}", "cases": cases,
              "ran": {b: sum(r["ran"] for r in cases if r["backend"] == b) for b in backends},
              "failed": [f"{r['backend']} {r['dtype']} L={r['length']} {r['case']}: "
                         f"finite={r['finite']} grad diff {r['max_grad_diff']}" for r in failed],
              "cudnn_max_grad_diff": max((r["max_grad_diff"] for r in cudnn if r["ran"]),
                                         default=None)}
    # the proof: cuDNN ran every case and passed each (a kernel that refused some inputs is
    # no proof for them); written either way, so a failing check withdraws an earlier pass
    passed = bool(cudnn) and all(r["ran"] and r["ok"] for r in cudnn)
    proof = {"passed": passed, "key": attention_proof_key(), "cases": len(cudnn),
             "max_grad_diff": result["cudnn_max_grad_diff"],
             "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "by": "benchmarks/gpu_check.py attention_backends"}
    path = attention_proof_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(proof, indent=1) + "\n")
    result.update(cudnn_proven=passed, proof=str(path))
    # a cuDNN failure is what "auto" guards against (it stays off here): reported, not failed;
    # a failure of a kernel "auto" does use fails the check
    used = [line for line, row in zip(result["failed"], failed)
            if row["backend"] != "CUDNN_ATTENTION"]
    if used:
        raise AssertionError(f"{len(used)} kernel cases with NaN/inf or off the math kernel: "
                             + "; ".join(used[:6]))
    return result


def check_syncs(ctx: Context) -> dict:
    """Host-device syncs between the first and the last progress report of an epoch."""
    ctx.need_cuda("torch.cuda.set_sync_debug_mode")
    from engine.config import load_config
    from engine.control import RunControl
    from engine.pipeline import run

    config = load_config("sample", ["training.epochs=1", "eval.bleu_every=0",
                                    "training.precision=\"auto\""])
    window = {"on": False, "batches": [], "updates": []}

    def on_event(event) -> None:
        if isinstance(event, BatchProgress):
            if not window["on"]:
                window["on"] = True
                torch.cuda.set_sync_debug_mode("warn")
            window["batches"].append(event.batch)
            window["updates"].append(event.step)
            if event.batch == event.batches:
                torch.cuda.set_sync_debug_mode(0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            status = run(config, ctx.runs / "syncs", on_event, RunControl())
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    batches = window["batches"][-1] - window["batches"][0] if window["batches"] else 0
    updates = window["updates"][-1] - window["updates"][0] if window["updates"] else 0
    places = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return {"status": status, "batches": batches, "updates": updates, "syncs": len(syncs),
            "reports": len(window["batches"]),
            "syncs_per_batch": round(len(syncs) / max(batches, 1), 2),
            "where": dict(places.most_common(12))}


def check_base_step(ctx: Context, compiled: bool = False) -> dict:
    """Transformer-base through the run's own update step (engine/train/step.py); ``compiled``:
    with training.compile = true (the compile happens in the warm-up steps)."""
    from benchmarks.bench_train import step_flops
    from engine.config import load_config
    from engine.device import resolve_precision
    from engine.model import Transformer
    from engine.train import NoamSchedule, TrainingState, UpdateGroup, UpdateStep

    device = torch.device("cuda" if ctx.cuda else "cpu")
    if ctx.cuda:  # the paper's base model at the paper's batch
        vocab, length, steps = 37000, 32, 20
        settings = ["model.d_model=512", "model.ffn_hidden=2048", "model.n_head=8",
                    "model.n_layers=6", "training.max_tokens=25000", "training.precision=\"auto\""]
    else:  # the same code, small
        vocab, length, steps = 500, 16, 2
        settings = ["model.d_model=32", "model.ffn_hidden=64", "model.n_head=2",
                    "model.n_layers=1", "training.max_tokens=400", "training.precision=\"fp32\""]
    config = load_config("sample", settings + ["model.dropout=0.1", "model.max_len=256",
                                               f"training.compile={str(compiled).lower()}"])
    m = config.model
    precision, amp_dtype = resolve_precision(config.training.precision, device)
    torch.manual_seed(0)
    model = Transformer.from_config(m, vocab, vocab, share_embeddings=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9,
                                 fused=True)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    state = TrainingState(model, optimizer, NoamSchedule(optimizer, m.d_model, 4000, 1.0),
                          scaler, device, precision, amp_dtype)
    update_step = UpdateStep(state, config.training)

    from engine.batching import Batch
    from engine.prefetch import pinned

    rows = config.training.max_tokens // length
    g = torch.Generator().manual_seed(1)

    def batch() -> Batch:
        src = torch.randint(4, vocab, (rows, length), generator=g)
        tgt = torch.randint(4, vocab, (rows, length + 1), generator=g)
        cut = torch.randint(length * 3 // 4, length + 1, (rows,), generator=g)
        keep = torch.arange(length).unsqueeze(0) < cut.unsqueeze(1)
        src = src.masked_fill(~keep, 0)
        tgt_in, tgt_out = tgt[:, :-1].masked_fill(~keep, 0), tgt[:, 1:].masked_fill(~keep, 0)
        made = Batch(src, tgt_in.contiguous(), tgt_out.contiguous(), tokens=int(keep.sum()),
                     padded_tokens=src.numel() + tgt_in.numel())
        return pinned(made) if ctx.cuda else made

    batches = [batch() for _ in range(4)]

    def step(b) -> float:
        group = UpdateGroup()
        if not update_step.add_batch(group, b):
            raise RuntimeError(f"CUDA out of memory in the base step ({b.padded_tokens:,} "
                               "padded tokens)")
        _, nll = update_step.finish(group)
        return nll

    warm_started = time.perf_counter()
    for b in batches[:2]:  # warm up: kernels chosen, Adam's state allocated (and the compile)
        step(b)
    if ctx.cuda:
        torch.cuda.synchronize()
    warm_up_seconds = time.perf_counter() - warm_started
    if ctx.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    if ctx.cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    tokens = sum(b.tokens for b in batches) / len(batches)
    flops = step_flops(rows, length, length, m.d_model, m.ffn_hidden, m.n_layers, vocab)
    result = {"precision": precision, "rows": rows, "length": length, "steps": steps,
              "parameters": sum(p.numel() for p in model.parameters()),
              "seconds_per_step": round(seconds, 4),
              "target_tokens_per_second": round(tokens / seconds),
              "model_tflops_per_second": round(flops / seconds / 1e12, 2),
              "loss": "engine/loss.py (lean)" if (ROOT / "engine" / "loss.py").is_file()
              else "train.label_smoothed_loss (before the lean loss)"}
    if update_step.compiled is not None:
        result["compile_seconds"] = round(update_step.compiled.seconds or 0.0, 1)
        result["warm_up_seconds"] = round(warm_up_seconds, 1)
        result["graphs"] = update_step.compiled.graphs()  # more than 1: recompilations
    if ctx.cuda:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        peak = matmul_peak(amp_dtype or torch.float32)
        result["matmul_peak_tflops"] = round(peak / 1e12, 1)
        result["mfu_vs_matmul_peak"] = round(flops / seconds / peak, 3)
        result["idle"] = idle_gaps(lambda: [step(b) for b in batches[:3]])
    return result


def check_base_compile(ctx: Context) -> dict:
    """training.compile off and on, Transformer-base (check_base_step twice): tokens/s, MFU,
    the compile's seconds and the graphs compiled (recompilations). What "auto" = on CUDA rests
    on."""
    ctx.need_cuda("compiling the base model takes minutes on a CPU")
    eager, compiled = check_base_step(ctx, compiled=False), check_base_step(ctx, compiled=True)
    keys = ("target_tokens_per_second", "model_tflops_per_second", "mfu_vs_matmul_peak",
            "peak_memory_gib")
    result = {"eager": {k: eager.get(k) for k in keys},
              "compiled": {k: compiled.get(k) for k in
                           keys + ("compile_seconds", "warm_up_seconds", "graphs")}}
    result["speedup"] = round(compiled["target_tokens_per_second"]
                              / eager["target_tokens_per_second"], 3)
    return result


def check_ddp_vs_hand(ctx: Context) -> dict:
    """The hand gradient averaging against DistributedDataParallel on 2 GPUs (NCCL):
    benchmarks/bench_ddp.py under torchrun; the ratio decides engine/distributed.py's default."""
    ctx.need_cuda("DDP against the hand averaging over NCCL")
    if torch.cuda.device_count() < 2:
        raise Skip(f"needs 2 GPUs, this machine has {torch.cuda.device_count()}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(ROOT / "benchmarks" / "bench_ddp.py"),
               "--d-model", "512", "--layers", "6", "--vocab", "37000", "--batch", "128",
               "--len", "32", "--rounds", "5", "--updates", "5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ctx.env())
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"bench_ddp.py failed: {(done.stdout + done.stderr)[-1500:]}")
    ratio = [line for line in lines if line.startswith("hand / ddp time = ")]
    return {"output": lines[-4:],
            "hand_over_ddp": float(ratio[0].split("=")[1].split()[0]) if ratio else None}


def matmul_peak(dtype: torch.dtype, n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def idle_gaps(work) -> dict:
    """How long the GPU sat without a kernel while ``work`` ran (CUDA trace of the profiler)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        work()
        torch.cuda.synchronize()
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == DeviceType.CUDA)
    if not spans:
        return {"kernels": 0}
    gaps, end = [], spans[0][1]
    for start, stop in spans[1:]:
        if start > end:
            gaps.append(start - end)
        end = max(end, stop)
    total = end - spans[0][0]
    return {"kernels": len(spans), "span_ms": round(total / 1e3, 2),
            "idle_fraction": round(sum(gaps) / total, 4) if total else 0.0,
            "largest_gap_ms": round(max(gaps, default=0) / 1e3, 3),
            "gaps_over_100us": sum(g > 100 for g in gaps)}


OOM_CHILD = "--oom-child"


def check_forced_oom(ctx: Context) -> dict:
    ctx.need_cuda("torch.cuda.set_per_process_memory_fraction")
    out = ctx.out / "oom.json"
    done = subprocess.run([sys.executable, __file__, OOM_CHILD, str(out), str(ctx.runs / "oom")],
                          capture_output=True, text=True, timeout=240, env=ctx.env(), cwd=ROOT)
    if not out.is_file():
        raise AssertionError(f"the OOM child wrote nothing: {(done.stdout + done.stderr)[-1500:]}")
    result = json.loads(out.read_text())
    problems = []
    if result["status"] != "failed" or "out of memory in 3 batches in a row" not in (
            result["failure"] or ""):
        problems.append(f"expected a stop after 3 OOM batches, got {result['status']}: "
                        f"{result['failure']}")
    if result["skipped"] != 3:
        problems.append(f"{result['skipped']} batches skipped, not 3")
    if result["allocated_after_skips"] and max(result["allocated_after_skips"]) > \
            result["baseline"] + 2**20:
        problems.append("memory did not come back to its baseline after a skipped batch")
    if problems:
        raise AssertionError("; ".join(problems))
    return result


def oom_child(out: Path, run_dir: Path) -> None:
    """A run whose every batch cannot fit: the memory fraction is set when training starts, to
    what the model and optimizer use plus 32 MiB."""
    from engine.config import load_config
    from engine.control import RunControl
    from engine.pipeline import run

    config = load_config("sample", ["training.epochs=1", "training.max_bad_batches=3",
                                    "model.d_model=1024", "model.ffn_hidden=4096",
                                    "model.n_head=16", "model.n_layers=4",
                                    "training.max_tokens=8192", "training.precision=\"auto\""])
    seen = {"baseline": None, "allocated_after_skips": [], "skipped": 0}

    def on_event(event) -> None:
        if isinstance(event, StageStarted) and event.stage == "train":
            torch.cuda.synchronize()
            seen["baseline"] = torch.cuda.memory_allocated()
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, (torch.cuda.memory_reserved() + 32 * 2**20) / total))
        elif isinstance(event, BatchSkipped):
            seen["skipped"] += 1
            seen["allocated_after_skips"].append(torch.cuda.memory_allocated())
        elif isinstance(event, RunFailed):
            seen["failure"] = event.message

    seen["status"] = run(config, run_dir, on_event, RunControl())
    seen.setdefault("failure", None)
    out.write_text(json.dumps(seen))


def check_fit(ctx: Context) -> dict:
    try:
        from engine.fit import fit
    except ImportError as exc:
        raise Skip(f"engine.fit.fit is not on this branch (issue 16's fit; {exc})") from None
    from engine.config import load_config

    # on the CPU (the dry mode) against a 1 GiB budget: a real fit, over in a few probes
    overrides = [*(SMALL if ctx.small else []), *([] if ctx.cuda else ["training.memory_budget=1.0"])]
    config = load_config("sample", overrides)
    started = time.monotonic()
    found = fit(config, "cuda" if ctx.cuda else "cpu")
    result = {"fit": _plain(found), "seconds": round(time.monotonic() - started, 1)}
    result["run"] = cli(ctx, ctx.runs / "fit", *ctx.preset_overrides(
        f"training.max_tokens={found.max_tokens}"))
    return result


def _plain(value):
    import dataclasses

    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value if isinstance(value, (dict, list, str, int, float, type(None))) else repr(value)


def check_torchrun(ctx: Context) -> dict:
    from engine.distributed import ONE_PROCESS_JOB_ENV

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=1"]
    result = cli(ctx, ctx.runs / "torchrun", *ctx.preset_overrides(), launcher=launcher,
                 env=ctx.env(**{ONE_PROCESS_JOB_ENV: "1"}))
    backend = (result.get("model") or {}).get("backend")
    if result["status"] != "finished":
        raise AssertionError(f"torchrun job: {result.get('failure') or result.get('output_tail')}")
    if backend != ("nccl" if ctx.cuda else "gloo"):
        raise AssertionError(f"the job trained without a process group of the expected backend "
                             f"(model stage says {backend!r})")
    return result


CHECKS = {"versions": check_versions, "nvml": check_nvml, "cli_runs": check_cli_runs,
          "resume": check_resume, "attention": check_attention,
          "attention_backends": check_attention_backends, "syncs": check_syncs,
          "base_step": check_base_step, "base_compile": check_base_compile,
          "forced_oom": check_forced_oom, "fit": check_fit, "torchrun_nccl": check_torchrun,
          "ddp_vs_hand": check_ddp_vs_hand}


# --- the report ------------------------------------------------------------------------------


def summary_line(name: str, result: dict) -> str:
    status = result["status"]
    if status != "ok":
        return f"- **{name}**: {status.upper()} ({result['seconds']}s): {result['reason']}"
    data = result["data"]
    text = {
        "versions": lambda d: (f"torch {d['torch']}, CUDA {d['cuda_runtime']}, GPU {d['gpu']}"
                               + (f" (sm {d['compute_capability']}, auto = "
                                  f"{d['auto_precision']}, NCCL {d['nccl']}, driver "
                                  f"{d['driver']})" if d.get("gpu") else "")),
        "nvml": lambda d: f"{len(d['nvml_uuids'])} NVML device(s), mapping {d.get('mapping')}",
        "cli_runs": lambda d: ", ".join(
            f"{k}: {v['status']}" + (f" val {v['epochs'][-1]['val_loss']}" if v.get("epochs")
                                     else "") for k, v in d.items()),
        "resume": lambda d: ", ".join(f"{k}: {v['status']}" for k, v in d.items()),
        "attention": lambda d: f"{len(d['cases'])} cases without the math kernel, kernels "
                               f"{sorted({k for c in d['cases'] for k in c.get('kernels', [])})[:4]}",
        "attention_backends": lambda d: (
            f"sm {d['capability']}, cases run per kernel {d['ran']}, cuDNN largest grad diff "
            f"{d['cudnn_max_grad_diff']}, cuDNN proven: {d['cudnn_proven']} ({d['proof']})"),
        "syncs": lambda d: f"{d['syncs_per_batch']} syncs/batch over {d['batches']} batches "
                           f"({d['updates']} updates, {d['reports']} reports)",
        "base_step": lambda d: (f"{d['target_tokens_per_second']:,} tgt tok/s, "
                                f"{d['model_tflops_per_second']} TFLOP/s"
                                + (f", MFU {d['mfu_vs_matmul_peak']:.1%} of matmul peak, peak "
                                   f"{d['peak_memory_gib']} GiB, idle "
                                   f"{d['idle'].get('idle_fraction')}" if "idle" in d else "")
                                + f"; loss: {d['loss']}"),
        "base_compile": lambda d: (
            f"compiled {d['speedup']}x eager tokens/s (MFU {d['eager']['mfu_vs_matmul_peak']} -> "
            f"{d['compiled']['mfu_vs_matmul_peak']}), compile {d['compiled']['compile_seconds']}"
            f" s, {d['compiled']['graphs']} graphs"),
        "ddp_vs_hand": lambda d: f"hand / DDP time {d['hand_over_ddp']}",
        "forced_oom": lambda d: f"{d['skipped']} skipped, baseline kept, then: {d['failure']}",
        "fit": lambda d: f"fit {d['fit']}",
        "torchrun_nccl": lambda d: f"{d['status']} with {(d.get('model') or {}).get('backend')}",
    }[name](data)
    return f"- **{name}**: ok ({result['seconds']}s): {text}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check"))
    parser.add_argument("--dry-run", action="store_true",
                        help="skip every CUDA-only check, run the others small (the CPU's mode)")
    parser.add_argument("--only", help="comma-separated check names")
    parser.add_argument(OOM_CHILD, nargs=2, metavar=("OUT", "RUN_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.oom_child:
        oom_child(Path(args.oom_child[0]), Path(args.oom_child[1]))
        return 0

    from engine.device import use_expandable_segments

    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.out.resolve(), args.dry_run)
    if ctx.cuda:
        use_expandable_segments()  # as a training process does, before CUDA starts here
    names = args.only.split(",") if args.only else list(CHECKS)
    started = time.monotonic()
    for name in names:
        began = time.monotonic()
        try:
            result = {"status": "ok", "data": CHECKS[name](ctx)}
        except Skip as exc:
            result = {"status": "skipped", "reason": str(exc)}
        except Exception as exc:
            result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:2000],
                      "traceback": traceback.format_exc().splitlines()[-8:]}
        result["seconds"] = round(time.monotonic() - began, 1)
        ctx.results[name] = result
        print(summary_line(name, result), flush=True)

    report = {"mode": "gpu" if ctx.cuda else "dry-run (no CUDA)",
              "seconds": round(time.monotonic() - started, 1), "checks": ctx.results}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    lines = [f"# gpu_check: {report['mode']}, {report['seconds']} s", ""]
    lines += [summary_line(name, result) for name, result in ctx.results.items()]
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print(f"\nreport: {args.out / 'gpu_check.md'}, {args.out / 'gpu_check.json'} "
          f"({report['seconds']} s)")
    return 1 if any(r["status"] == "failed" for r in ctx.results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
