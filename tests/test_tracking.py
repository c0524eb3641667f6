import json

import pytest

from quadapter.tracking import resolve_wandb_mode, write_json_atomic


@pytest.mark.parametrize("env,expected", [({}, "offline"), ({"WANDB_API_KEY": "k" * 40}, "online"),
                                          ({"WANDB_MODE": "disabled"}, "disabled")])
def test_auto_mode_is_offline_unless_wandb_is_configured(monkeypatch, tmp_path, env, expected):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    for key in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert resolve_wandb_mode("auto") == expected
    assert resolve_wandb_mode("offline") == "offline"


def test_netrc_login_means_online(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    netrc.chmod(0o600)
    assert resolve_wandb_mode("auto") == "online"


def test_bad_mode_names_the_options():
    with pytest.raises(ValueError, match="auto, online, offline, disabled"):
        resolve_wandb_mode("cloud")


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"status": "running"})
    write_json_atomic(path, {"status": "completed", "metrics": {"test/x/ppl": 1.5}})
    assert json.loads(path.read_text())["metrics"]["test/x/ppl"] == 1.5
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_the_wandb_summary_takes_each_task_s_protocol_keys():
    """A GLUE run's protocol has examples, not windows: its summary must still build (W&B closes)."""
    from quadapter.tracking import summary_of

    lm = {"status": "completed", "metrics": {"test/ptb/ppl": 3.0},
          "protocol": {"ptb": {"context": 128, "stride": 128, "scored_tokens": 100, "split": "test"}}}
    glue = {"status": "completed", "metrics": {"test/glue_mrpc/f1": 80.0},
            "protocol": {"glue_mrpc": {"split": "dev", "examples": 408, "max_length": 128}}}
    assert summary_of(lm)["protocol/ptb/scored_tokens"] == 100 and "protocol/ptb/split" not in summary_of(lm)
    assert summary_of(glue)["protocol/glue_mrpc/examples"] == 408
    assert summary_of(glue)["test/glue_mrpc/f1"] == 80.0
