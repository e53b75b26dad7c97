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
