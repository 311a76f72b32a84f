"""Settings precedence: flag > DR_* environment > TOML file > default."""

from __future__ import annotations

import pytest

from dr_core.config import resolve
from dr_core.errors import ConfigError
from dr_core.llm import LLMConfig


def config_file(tmp_path, text):
    path = tmp_path / "dr.toml"
    path.write_text(text)
    return path


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    path = config_file(
        tmp_path, '[llm]\nmodel = "file-model"\nconcurrency = 3\nbase_url = "http://file/v1"\n'
    )
    env = {"DR_LLM_MODEL": "env-model", "DR_LLM_CONCURRENCY": "5"}
    cfg = resolve(LLMConfig, "llm", {"model": "flag-model", "api_key": None}, environ=env, file=path)
    assert cfg.model == "flag-model"  # flag beats env and file
    assert cfg.concurrency == 5  # env beats file, and is parsed to int
    assert cfg.base_url == "http://file/v1"  # file beats default
    assert cfg.max_retries == LLMConfig().max_retries  # default
    assert cfg.api_key is None  # a flag left at None means "not given"


def test_empty_environment_variables_count_as_unset():
    cfg = resolve(LLMConfig, "llm", {}, environ={"DR_LLM_MODEL": ""}, file=None)
    assert cfg.model == LLMConfig().model


def test_nested_sections_and_their_environment_names(tmp_path):
    from pydantic import BaseModel

    from dr_core.config import is_configured

    class JudgeConfig(BaseModel):
        votes: int = 1

    path = config_file(tmp_path, '[judge]\nvotes = 3\n\n[judge.llm]\nmodel = "judge-model"\n')
    cfg = resolve(LLMConfig, "judge.llm", {}, environ={"DR_JUDGE_LLM_TIMEOUT_S": "30"}, file=path)
    assert (cfg.model, cfg.timeout_s) == ("judge-model", 30.0)
    assert resolve(JudgeConfig, "judge", {}, environ={}, file=path).votes == 3  # [judge.llm] is not a setting
    assert is_configured(LLMConfig, "judge.llm", {}, environ={}, file=path)
    assert not is_configured(LLMConfig, "judge.llm", {"model": None}, environ={}, file=None)


def test_errors_name_where_the_bad_value_came_from(tmp_path):
    with pytest.raises(
        ConfigError, match="environment variable DR_LLM_CONCURRENCY: Input should be a valid integer"
    ):
        resolve(LLMConfig, "llm", {}, environ={"DR_LLM_CONCURRENCY": "many"}, file=None)
    path = config_file(tmp_path, "[llm]\nconcurency = 3\n")
    with pytest.raises(
        ConfigError, match=r"dr.toml: \[llm\] has unknown setting 'concurency'; known: .*concurrency"
    ):
        resolve(LLMConfig, "llm", {}, environ={}, file=path)
    path = config_file(tmp_path, "[llm]\nconcurrency = 0\n")
    with pytest.raises(
        ConfigError, match=r"dr.toml \[llm\] concurrency: Input should be greater than or equal to 1"
    ):
        resolve(LLMConfig, "llm", {}, environ={}, file=path)
    with pytest.raises(ConfigError, match="--max-retries: Input should be greater than or equal to 0"):
        resolve(LLMConfig, "llm", {"max_retries": -1}, environ={}, file=None)


def test_bad_or_missing_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        resolve(LLMConfig, "llm", {}, environ={}, file=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        resolve(LLMConfig, "llm", {}, environ={}, file=config_file(tmp_path, "[llm\n"))
