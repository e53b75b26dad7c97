"""Which environment variables a manifest keeps, and hiding the secret-looking ones."""

from __future__ import annotations

import re
from collections.abc import Mapping

from cctrace.trace.handoff import PREFIX

# Prefixes that say something about how a GPU server ran; everything else is left out.
ALLOWED_PREFIXES = (
    "CUDA_",
    "NCCL_",
    "NVIDIA_",
    "NVTX_",
    "CUPTI_",
    "TORCH_",
    "PYTORCH_",
    "VLLM_",
    "SGLANG_",
    "OMP_",
    "MKL_",
    "HF_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    PREFIX,
    "LD_",
    "PYTHON",
)
ALLOWED_NAMES = ("PATH", "HOSTNAME", "USER", "SLURM_JOB_ID", "KUBERNETES_SERVICE_HOST")
SECRET_PATTERN = re.compile(r"TOKEN|SECRET|PASSW|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL|AUTH|_KEY$", re.I)
# values that look like credentials even under an innocent name
SECRET_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16})$")
REDACTED = "<redacted>"


def allowed_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of `env`, with secret-looking values replaced by REDACTED."""
    out: dict[str, str] = {}
    for key in sorted(env):
        if not (key in ALLOWED_NAMES or key.startswith(ALLOWED_PREFIXES)):
            continue
        value = env[key]
        out[key] = REDACTED if SECRET_PATTERN.search(key) or SECRET_VALUE.match(value) else value
    return out
