"""Credentials stay with the process that uses them: each child process (trainer, EvalScope, `evalscope perf`,
vLLM's offline engine) gets the credentials it uses and no others, and a URL's `user:password@` never
reaches a message."""

from __future__ import annotations

import subprocess

import pytest

from alignflow.secrets import child_env, is_credential, redact_url

FAKE_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "HF_TOKEN",
                    "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING",
                    "WANDB_API_KEY", "COMET_API_KEY", "OPENAI_API_KEY", "GITHUB_TOKEN", "LAB_DB_PASSWORD",
                    "SIGNING_SECRET", "GOOGLE_APPLICATION_CREDENTIALS", "ALIGNFLOW_EVAL_API_KEY",
                    "ALIGNFLOW_PERF_API_KEY")


@pytest.fixture
def fake_credentials(monkeypatch) -> dict[str, str]:
    """Every credential a user's shell might hold, with a value that shows up wherever it leaks to."""
    values = {name: f"leaked-{name.lower()}-4f9a" for name in FAKE_CREDENTIALS}
    values["AWS_ENDPOINT_URL"] = "http://admin:leaked-endpoint-password@127.0.0.1:8333"
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ALIGNFLOW_TEST_SETTING", "harmless")
    return values


def leaked(env: dict, credentials: dict[str, str], allowed: tuple[str, ...] = ()) -> list[str]:
    """The credentials whose value appears anywhere in `env`, under any name, except those `allowed`."""
    return sorted(name for name, value in credentials.items()
                  if name not in allowed and any(value in v for v in env.values()))


def test_redact_url_hides_userinfo_in_a_url_and_in_text():
    assert redact_url("http://a:b@h:1/x") == "http://***@h:1/x"
    assert redact_url("https://token@example.com") == "https://***@example.com"
    assert redact_url("http://127.0.0.1:8333/b") == "http://127.0.0.1:8333/b"
    assert redact_url('Could not connect to "http://admin:hunter2@127.0.0.1:1/b?x=1"') == \
        'Could not connect to "http://***@127.0.0.1:1/b?x=1"'
    assert redact_url(None) is None


def test_what_counts_as_a_credential():
    for name in ("AWS_ENDPOINT_URL", "aws_secret_access_key", "HF_TOKEN", "PREFECT_API_KEY", "X_PASSWORD",
                 "GOOGLE_APPLICATION_CREDENTIALS", "PREFECT_API_AUTH_STRING"):
        assert is_credential(name), name
    for name in ("PATH", "HOME", "CUDA_VISIBLE_DEVICES", "PREFECT_API_URL", "HF_HOME", "MODELSCOPE_CACHE"):
        assert not is_credential(name), name


def test_child_env_adds_back_exactly_what_it_is_told(fake_credentials):
    env = child_env(keep=("WANDB_API_KEY", "NOT_SET_ANYWHERE_TOKEN"), SERVED_API_KEY="k", ALIGNFLOW_TEST_SETTING=None)
    assert env["WANDB_API_KEY"] == fake_credentials["WANDB_API_KEY"] and env["SERVED_API_KEY"] == "k"
    assert "NOT_SET_ANYWHERE_TOKEN" not in env and "ALIGNFLOW_TEST_SETTING" not in env
    assert leaked(env, fake_credentials, allowed=("WANDB_API_KEY",)) == []
    assert "PATH" in env


def test_trainer_child_gets_no_store_or_hub_credentials(fake_credentials):
    from tasks.trainer import trainer_env

    env = trainer_env({"report_to": ["tensorboard"]}, gpus=0)
    assert leaked(env, fake_credentials) == []
    assert not [name for name in env if name.startswith("AWS_")]  # the parent stores the checkpoints
    assert env["TOKENIZERS_PARALLELISM"] == "false" and env["DS_ACCELERATOR"] == "cpu"
    assert env["ALIGNFLOW_TEST_SETTING"] == "harmless"


def test_trainer_child_gets_the_credentials_of_its_trackers_only(fake_credentials):
    from tasks.trainer import trainer_env

    env = trainer_env({"report_to": ["wandb", "comet_ml"]}, gpus=1)
    assert env["WANDB_API_KEY"] == fake_credentials["WANDB_API_KEY"]
    assert env["COMET_API_KEY"] == fake_credentials["COMET_API_KEY"]
    assert leaked(env, fake_credentials, allowed=("WANDB_API_KEY", "COMET_API_KEY")) == []


def test_evalscope_child_gets_the_endpoint_key_and_nothing_else(fake_credentials, monkeypatch, tmp_path):
    from tasks import evaluate

    assert "ALIGNFLOW_EVAL_API_KEY" not in evaluate.evalscope_env(None)  # a keyless server: no stale key
    launched = capture_child_env(monkeypatch)
    evaluate.run_evalscope({"sets": []}, None, tmp_path / "evalscope.log", "served-key")
    assert launched[0][evaluate.KEY_VARIABLE] == "served-key"
    assert leaked(launched[0], fake_credentials) == []


def test_perf_child_gets_the_endpoint_key_and_nothing_else(fake_credentials, monkeypatch, tmp_path):
    from serving import load_test

    launched = capture_child_env(monkeypatch)
    load_test.measure("http://127.0.0.1:1/v1", "m", ["hi"], load_test.LoadTest(), "served-key", tmp_path / "perf",
                      tmp_path / "perf.log")
    assert launched[0][load_test.KEY_VARIABLE] == "served-key"
    assert leaked(launched[0], fake_credentials) == []


def test_vllm_gets_no_credential_and_its_key_by_environment(fake_credentials, tmp_path):
    from serving.lifecycle import server_env
    from serving.vllm import ENGINE

    assert "VLLM_API_KEY" not in server_env(ENGINE, str(tmp_path))
    assert server_env(ENGINE, str(tmp_path), key="served-key")["VLLM_API_KEY"] == "served-key"
    env = server_env(ENGINE, str(tmp_path))
    assert leaked(env, fake_credentials) == []
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm") and env["HF_HUB_OFFLINE"] == "1"


def capture_child_env(monkeypatch) -> list[dict]:
    """Record the environment each `subprocess.run` would give its child, and start nothing."""
    launched = []

    def run(cmd, env=None, **kwargs):
        launched.append(env)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", run)
    return launched
