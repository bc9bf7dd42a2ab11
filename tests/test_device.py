"""One device choice: preflight, training and the commands ask engine/device.py the same thing."""

import json
import subprocess
import sys

import pytest
import torch

from engine.config import load_config
from engine.device import pick_device, resolve_precision
from engine.errors import ConfigError
from engine.preflight import preflight

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def test_auto_and_cpu_choose_a_device_that_exists():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@no_gpu
def test_an_explicit_cuda_without_a_gpu_is_refused_by_training_and_preflight_alike(tmp_path):
    with pytest.raises(ConfigError, match=r'device = "cuda" but no CUDA device'):
        pick_device("cuda")
    with pytest.raises(ConfigError, match=r'device = "cuda" but no CUDA device'):
        preflight(load_config("sample", ["training.device=cuda"]), tmp_path)


@no_gpu
def test_the_cli_refuses_cuda_without_a_gpu_in_one_line_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine", "--set", "training.device=cuda",
                             "--until", "data"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no CUDA device" in result.stderr
    assert not (tmp_path / "saved").exists()  # nothing written for a run that never started


def test_fp16_needs_a_gpu_and_fp32_has_no_autocast():
    assert resolve_precision("fp32", torch.device("cpu")) == ("fp32", None)
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))


# --- precision by compute capability, attention kernels, the CUDA allocator ----------------


@pytest.mark.parametrize("card, capability, auto", [
    ("T4", (7, 5), "fp16"), ("V100", (7, 0), "fp16"), ("A100", (8, 0), "bf16"),
    ("RTX 4090", (8, 9), "bf16"), ("H100", (9, 0), "bf16"), ("B200", (10, 0), "bf16")])
def test_auto_precision_takes_bf16_only_where_the_gpu_has_it_natively(card, capability, auto):
    from engine.device import precision_for

    assert precision_for("auto", "cuda", capability) == auto, card
    assert precision_for("fp32", "cuda", capability) == "fp32"
    assert precision_for("fp16", "cuda", capability) == "fp16"
    if auto == "fp16":  # emulated bf16 on a V100 or T4: refused, with what to use instead
        with pytest.raises(ConfigError, match=rf"compute capability {capability[0]}\."
                                              rf"{capability[1]}\) has no native bfloat16"):
            precision_for("bf16", "cuda", capability)
    else:
        assert precision_for("bf16", "cuda", capability) == "bf16"


def test_on_the_cpu_auto_takes_bf16_only_with_native_bf16_instructions():
    from engine.device import precision_for

    assert precision_for("auto", "cpu", None, fast_cpu_bf16=True) == "bf16"
    assert precision_for("auto", "cpu", None, fast_cpu_bf16=False) == "fp32"
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        precision_for("fp16", "cpu")


def test_tf32_is_only_for_fp32_on_cuda():
    from engine.device import enable_tf32

    before = torch.backends.cuda.matmul.fp32_precision
    assert not enable_tf32(torch.device("cpu"), "fp32")
    assert torch.backends.cuda.matmul.fp32_precision == before


def sdpa_kernels_called(attention: str) -> set[str]:
    """The aten attention ops a real forward and backward of the engine's Transformer calls
    under training.attention = ``attention`` (the same context the training loop uses)."""
    from torch.profiler import ProfilerActivity, profile

    from engine.device import attention_context
    from engine.model import Transformer

    torch.manual_seed(0)
    model = Transformer(50, 50, d_model=32, ffn_hidden=64, n_head=2, n_layers=1, dropout=0.0,
                        max_len=16, share_embeddings=True)
    src, tgt = torch.randint(4, 50, (3, 7)), torch.randint(4, 50, (3, 6))
    src[0, 5:] = 0  # padding: the encoder takes an explicit mask
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with attention_context(attention):
            model(src, tgt).sum().backward()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_the_attention_switch_reaches_the_sdpa_call():
    auto = sdpa_kernels_called("auto")
    math = sdpa_kernels_called("math")
    assert any("flash_attention" in k for k in auto)  # torch's choice on the CPU: flash
    assert any("_math" in k for k in math) and not any("flash" in k for k in math)
    # no-cudnn leaves the CPU's kernels alone (cuDNN is a GPU kernel)
    assert sdpa_kernels_called("no-cudnn") == auto


def test_the_attention_switch_is_a_checked_config_key():
    config = load_config("sample", ["training.attention=no-cudnn"])
    assert config.training.attention == "no-cudnn"
    with pytest.raises(ConfigError, match="attention"):
        load_config("sample", ["training.attention=cudnn"])


def test_expandable_segments_are_set_unless_the_user_chose_an_allocator_config():
    from engine.device import ALLOC_CONF_ENV, use_expandable_segments

    environ: dict[str, str] = {}
    notice = use_expandable_segments(environ)
    assert environ == {ALLOC_CONF_ENV: "expandable_segments:True"}
    assert "expandable_segments:True" in notice
    users = {ALLOC_CONF_ENV: "max_split_size_mb:128"}
    assert use_expandable_segments(users) is None
    assert users == {ALLOC_CONF_ENV: "max_split_size_mb:128"}


# --- cuDNN attention on sm90+: off under "auto" until gpu_check.py has proven it -------------


@pytest.mark.parametrize("capability, excluded", [
    ((8, 0), False), ((8, 9), False), ((9, 0), True), ((10, 0), True)])
def test_auto_attention_leaves_cudnn_out_on_sm90_and_newer_unless_proven(capability, excluded):
    from torch.nn.attention import SDPBackend

    from engine.device import attention_backends

    auto = attention_backends("auto", capability)
    if excluded:  # A100 and Ada keep torch's own choice (None); H100, H200, B200 do not
        assert SDPBackend.CUDNN_ATTENTION not in auto
        assert {SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION} <= set(auto)
    else:
        assert auto is None
    assert attention_backends("auto", capability, cudnn_proven=True) is None
    assert attention_backends("auto", None) is None  # not CUDA: torch's choice


def fake_gpu(monkeypatch, capability=(9, 0), name="NVIDIA H100 80GB HBM3"):
    """This process sees one CUDA device of ``capability``: what engine/device.py asks."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def cudnn_allowed_at_masked_calls(attention: str) -> list[bool]:
    """For each SDPA call with a mask in a real forward and backward of the engine's Transformer
    on a padded batch: was cuDNN attention allowed at that moment?"""
    from engine.device import attention_context
    from engine.model import Transformer

    torch.manual_seed(0)
    model = Transformer(50, 50, d_model=32, ffn_hidden=64, n_head=2, n_layers=1, dropout=0.0,
                        max_len=16, share_embeddings=True)
    src, tgt = torch.randint(4, 50, (3, 7)), torch.randint(4, 50, (3, 6))
    src[0, 5:] = 0  # padding: the encoder and the cross attention take a mask
    real, seen = torch.nn.functional.scaled_dot_product_attention, []

    def watched(*args, **kwargs):
        if kwargs.get("attn_mask") is not None:
            seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = watched
    try:
        with attention_context(attention):
            model(src, tgt).sum().backward()
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
    assert seen, "no masked attention call"
    return seen


def test_on_a_faked_h100_auto_runs_masked_attention_without_cudnn_until_a_proof_says_so(
        monkeypatch, tmp_path):
    from engine.device import ATTENTION_PROOF_ENV, attention_proof_key

    proof = tmp_path / "attention-proof.json"
    monkeypatch.setenv(ATTENTION_PROOF_ENV, str(proof))
    assert torch.backends.cuda.cudnn_sdp_enabled()  # torch's default: allowed
    fake_gpu(monkeypatch, (9, 0))
    assert cudnn_allowed_at_masked_calls("auto") == [False] * 2  # encoder self, cross
    assert torch.backends.cuda.cudnn_sdp_enabled()  # only inside the forward
    # a proof for another GPU (or another torch or cuDNN) proves nothing here
    key = attention_proof_key()
    proof.write_text(json.dumps({"passed": True, "key": {**key, "gpu": "NVIDIA H200"}}))
    assert not any(cudnn_allowed_at_masked_calls("auto"))
    proof.write_text(json.dumps({"passed": False, "key": key}))
    assert not any(cudnn_allowed_at_masked_calls("auto"))
    proof.write_text(json.dumps({"passed": True, "key": key}))  # gpu_check.py passed here
    assert all(cudnn_allowed_at_masked_calls("auto"))
    assert not any(cudnn_allowed_at_masked_calls("no-cudnn"))
    # an A100: torch's choice, proof or not
    proof.unlink()
    fake_gpu(monkeypatch, (8, 0), "NVIDIA A100-SXM4-80GB")
    assert all(cudnn_allowed_at_masked_calls("auto"))


def test_the_proof_file_lives_in_the_user_cache_unless_the_environment_names_one(tmp_path):
    from engine.device import ATTENTION_PROOF_ENV, attention_proof_path

    assert attention_proof_path({"XDG_CACHE_HOME": str(tmp_path)}) == \
        tmp_path / "transformer-tui" / "attention-proof.json"
    assert attention_proof_path({ATTENTION_PROOF_ENV: str(tmp_path / "p.json")}) == \
        tmp_path / "p.json"


# --- what ran ------------------------------------------------------------------------------


def test_versions_name_this_torch_and_device_and_read_as_one_line():
    from engine.preflight import cpu_name
    from engine.versions import _cudnn_text, versions, versions_text

    here = versions("cpu")
    assert here == {"torch": torch.__version__, "device": cpu_name()}
    assert all(type(value) is str for value in here.values())  # what a checkpoint can hold
    assert versions_text(here) == f"torch {torch.__version__}, {cpu_name()}"
    assert (_cudnn_text(91002), _cudnn_text(8907)) == ("9.10.2", "8.9.7")
    assert versions_text({"device": "NVIDIA H100 80GB HBM3", "driver": "570.86",
                          "cudnn": "9.10.2", "torch": "2.13.0", "cuda": "12.8"}) == \
        "torch 2.13.0, CUDA 12.8, cuDNN 9.10.2, driver 570.86, NVIDIA H100 80GB HBM3"
