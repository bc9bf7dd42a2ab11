"""benchmarks/gpu_check.py in its dry mode, as CI runs it on a machine without a GPU: every
CUDA-only check is skipped with a reason, every other check runs small and passes, and the
report is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
CUDA_ONLY = {"syncs", "forced_oom", "attention_backends", "base_compile", "ddp_vs_hand"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine, run the real check")
def test_the_gpu_check_runs_dry_on_the_cpu_and_says_what_it_skipped(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "report")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "gpu_check.json").read_text())
    assert report["mode"] == "dry-run (no CUDA)"
    checks = report["checks"]
    assert set(checks) == {"versions", "nvml", "cli_runs", "resume", "attention", "syncs",
                           "base_step", "forced_oom", "fit", "torchrun_nccl",
                           "attention_backends", "base_compile", "ddp_vs_hand"}
    for name in CUDA_ONLY:
        assert checks[name]["status"] == "skipped" and "needs CUDA" in checks[name]["reason"]
    ran = {name for name, check in checks.items() if check["status"] == "ok"}
    assert {"versions", "cli_runs", "resume", "attention", "base_step", "torchrun_nccl"} <= ran
    # what ran, ran for real: runs that finished, kernels that were called
    cli_runs = checks["cli_runs"]["data"]
    assert cli_runs["auto"]["status"] == cli_runs["fp32"]["status"] == "finished"
    assert cli_runs["fp16"] == {"status": "skipped", "reason": "fp16 needs CUDA"}
    assert checks["resume"]["data"]["cpu"]["epochs"][-1]["epoch"] == 2
    assert all(case["ok"] and case["kernels"] for case in checks["attention"]["data"]["cases"])
    assert checks["torchrun_nccl"]["data"]["model"]["backend"] == "gloo"
    summary = (tmp_path / "report" / "gpu_check.md").read_text()
    assert summary.count("\n- **") == len(checks) and "SKIPPED" in summary


def test_each_attention_kernel_is_compared_with_the_math_kernel_on_padded_batches():
    """The comparison the attention_backends check runs on a GPU, here with the CPU's kernels:
    every kernel alone, a key padding mask, forward and backward, its distance to MATH."""
    sys.path.insert(0, str(SCRIPT.parent))
    from gpu_check import BACKEND_TOLERANCE, compare_backends

    rows = compare_backends(torch.device("cpu"), "fp32", (7, 33), heads=2, head_dim=16,
                            max_tokens=200, backends=["MATH", "FLASH_ATTENTION",
                                                      "CUDNN_ATTENTION"])
    assert {(r["backend"], r["length"], r["case"]) for r in rows} == {
        (b, n, f"{c}, key padding mask") for b in ("MATH", "FLASH_ATTENTION", "CUDNN_ATTENTION")
        for n in (7, 33) for c in ("self", "cross")}
    for row in rows:
        if row["backend"] == "CUDNN_ATTENTION":  # a GPU kernel: refused here, with the reason
            assert not row["ran"] and row["reason"]
        else:  # the CPU's flash kernel takes the mask, and agrees with MATH in fp32
            assert row["ran"] and row["finite"] and row["ok"], row
            assert row["max_grad_diff"] <= BACKEND_TOLERANCE["fp32"]
    assert all(r["max_grad_diff"] == 0 for r in rows if r["backend"] == "MATH")
    assert any(r["max_grad_diff"] > 0 for r in rows if r["backend"] == "FLASH_ATTENTION")
