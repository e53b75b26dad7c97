"""Which environment variables a manifest keeps, and hiding secrets: in variables, in command lines
(argv of the command and of every traced process) and in URLs with credentials."""

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
# names (of variables and of command-line options) whose values are secrets: a word of the name
# (HF_TOKEN, --api-key, DB_PASS, AUTHORIZATION) is one of these or starts with one; --max-tokens is not
SECRET_WORDS = ("token", "secret", "pass", "pwd", "key", "apikey", "auth", "credential", "private", "cookie")
SECRET_PATTERN = re.compile(
    r"(?:^|[^a-z0-9])(?:" + "|".join(SECRET_WORDS) + r")(?:$|[^a-z0-9]|(?<=pass)\w|(?<=auth)\w|(?<=credential)s|(?<=secret)s)",
    re.I,
)
# values that look like credentials even under an innocent name
SECRET_VALUE = re.compile(r"(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16})")
# scheme://user:password@host -> the password
URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):([^/@\s]+)@")
REDACTED = "<redacted>"


def redact_value(value: str) -> str:
    """`value` with credential-shaped tokens and URL passwords replaced."""
    value = SECRET_VALUE.sub(REDACTED, value)
    return URL_CREDENTIALS.sub(rf"\1:{REDACTED}@", value)


def redact_argv(argv: list) -> list[str]:
    """A command line with the secrets out: `--api-key X`, `--password=X`, `TOKEN=X`, credential-shaped
    values anywhere, passwords in URLs. The option names stay, so the command still reads."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        arg = str(arg)
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name, eq, _ = arg.partition("=")
        if eq and SECRET_PATTERN.search(name.lstrip("-")) and (name.startswith("-") or name.isidentifier()):
            out.append(f"{name}={REDACTED}")
            continue
        if arg.startswith("-") and not eq and SECRET_PATTERN.search(arg.lstrip("-")):
            hide_next = True
        out.append(redact_value(arg))
    return out


def allowed_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of `env`, with secret-looking values replaced by REDACTED."""
    out: dict[str, str] = {}
    for key in sorted(env):
        if not (key in ALLOWED_NAMES or key.startswith(ALLOWED_PREFIXES)):
            continue
        value = env[key]
        out[key] = REDACTED if SECRET_PATTERN.search(key) else redact_value(value)
    return out
