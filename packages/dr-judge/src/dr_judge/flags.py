"""The judge's flags, declared once for every command that judges: `dr judge score` and `compare`,
`dr bench run`, `dr data trajectories`. A flag that is not given is None, so that the [judge] and
[judge.llm] settings and DR_JUDGE_* variables apply. A setting's help is the description of the
`JudgeConfig` field it sets, with that field's default. Commands take them with
`dr_core.config_cli.with_flags`:

    @app.command()
    @with_flags(JudgeFlags, "judge_flags")
    def run(suite: str, judge_flags: JudgeFlags) -> None:
        judge = judge_flags.judge(at_once=4)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from dr_judge.judge import JudgeConfig

if TYPE_CHECKING:
    from dr_judge.judge import ChecklistJudge


def _setting(name: str, text: str | None = None) -> str:
    """The help of the flag that sets JudgeConfig's `name`: its description (or `text`) and default."""
    field = JudgeConfig.model_fields[name]
    shown = (text or field.description or "").rstrip(".")
    return f"{shown} (default: {field.default})."


class JudgeEndpoint(BaseModel):
    """Where the judge model is served: an OpenAI-compatible endpoint."""

    judge_base_url: str | None = Field(None, description="Judge endpoint (DR_JUDGE_LLM_BASE_URL).")
    judge_model: str | None = Field(None, description="Judge model (DR_JUDGE_LLM_MODEL).")
    judge_api_key: str | None = Field(None, description="Judge API key (DR_JUDGE_LLM_API_KEY).")

    def settings(self) -> dict[str, Any]:
        """The [judge] settings these flags set (None: left to the settings file)."""
        return {}

    def judge(self, at_once: int = 1, **settings: Any) -> ChecklistJudge:
        """The judge these flags ask for, over the settings they leave unset; `settings`: [judge] fields
        the command itself sets. `at_once`: responses judged at a time (the client's request cap)."""
        from dr_judge.build import make_judge

        return make_judge(
            self.judge_base_url,
            self.judge_model,
            self.judge_api_key,
            at_once=at_once,
            **{**self.settings(), **settings},
        )


class JudgeFlags(JudgeEndpoint):
    """The endpoint and how its verdicts become a score: for commands that judge as part of their work."""

    mode: Literal["strict", "graded"] | None = Field(
        None, description=_setting("mode", "strict (a report's binary mapping) or graded (1/0.5/0)")
    )
    votes: int | None = Field(None, ge=1, description=_setting("votes"))

    def settings(self) -> dict[str, Any]:
        return {"mode": self.mode, "votes": self.votes}


class ScoreFlags(JudgeFlags):
    """`dr judge score`'s: the judge flags and how the items are put to the model."""

    batch: int | None = Field(None, ge=0, description=_setting("batch"))
    temperature: float | None = Field(None, ge=0, description=_setting("temperature", "Judge temperature."))
    checks: bool = Field(
        True,
        description="Decide items that carry a rule check by the rule; --no-checks sends every item to the "
        "judge model, to measure it against the rules.",
    )

    def settings(self) -> dict[str, Any]:
        # --checks, the flag's default, leaves the [judge] setting as it is
        return {
            **super().settings(),
            "batch": self.batch,
            "temperature": self.temperature,
            "checks": None if self.checks else False,
        }
