from cctrace.trace.environment import REDACTED, allowed_environment


def test_allow_list_keeps_gpu_settings_and_drops_the_rest():
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "VLLM_USE_V1": "1", "HOME": "/root", "RANDOM_THING": "x"}
    out = allowed_environment(env)
    assert out == {"CUDA_VISIBLE_DEVICES": "0,1", "VLLM_USE_V1": "1"}


def test_secret_looking_values_are_redacted():
    env = {
        "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz",
        "VLLM_API_KEY": "supersecret",
        "NCCL_PASSWORD": "pw",
        "HF_HOME": "/data/hf",
        "TORCH_SOMETHING": "sk-abcdefghijklmnopqrstuvwxyz0123",
    }
    out = allowed_environment(env)
    assert out["HF_TOKEN"] == REDACTED
    assert out["VLLM_API_KEY"] == REDACTED
    assert out["NCCL_PASSWORD"] == REDACTED
    assert out["TORCH_SOMETHING"] == REDACTED  # credential-shaped value under an innocent name
    assert out["HF_HOME"] == "/data/hf"


def test_argv_secrets_are_redacted_and_the_rest_kept():
    from cctrace.trace.environment import redact_argv

    argv = ["serve.py", "--api-key", "abc", "--password=hunter2", "--token", "t0k", "--max-tokens", "5",
            "--tokenizer", "gpt2", "--url", "https://user:pw@host/x", "DB_PASS=x", "--model", "hf_abcdefghijklmnopqrstuvwx"]  # fmt: skip
    assert redact_argv(argv) == ["serve.py", "--api-key", REDACTED, f"--password={REDACTED}", "--token", REDACTED,
                                 "--max-tokens", "5", "--tokenizer", "gpt2", "--url", f"https://user:{REDACTED}@host/x",
                                 f"DB_PASS={REDACTED}", "--model", REDACTED]  # fmt: skip


def test_secret_names_and_url_credentials_in_the_environment():
    env = {"NCCL_PASS": "a", "HF_AUTHORIZATION": "b", "CUDA_SECRET_THING": "c", "VLLM_MAX_TOKENS": "5",
           "HF_ENDPOINT": "https://me:pw@mirror/"}  # fmt: skip
    out = allowed_environment(env)
    assert out == {"NCCL_PASS": REDACTED, "HF_AUTHORIZATION": REDACTED, "CUDA_SECRET_THING": REDACTED,
                   "VLLM_MAX_TOKENS": "5", "HF_ENDPOINT": f"https://me:{REDACTED}@mirror/"}  # fmt: skip
