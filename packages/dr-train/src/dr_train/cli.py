"""`dr train`: midtrain, sft and rl, as thin commands over `dr_train.recipes`.

Each command's flags are its recipe's config fields (`dr_train.config`, through `dr_core.config_cli`): a
flag not given is None, so the config file's `[train.<recipe>]` and DR_TRAIN_<RECIPE>_* variables apply
over the defaults. The command runs the recipe here or as `--nproc` ranks under torchrun.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from pydantic import BaseModel

from dr_core.config_cli import config_command
from dr_core.options import Inputs
from dr_train.config import MidtrainConfig, RLRecipeConfig, SFTConfig

app = typer.Typer(help="Train: mid-training, SFT and RL into Hugging Face checkpoints.", no_args_is_help=True)

HELP = {
    "midtrain": (
        "Mid-training: next-token loss on every token of documents ('text') and rendered conversations,"
        " packed into --max-len rows (positions restart per document; no attention across documents). "
        "Run it at 32K, then again from that checkpoint at 128K with --rope-theta or --rope-scaling "
        "yarn:4."
    ),
    "sft": (
        "SFT: loss only on assistant turns of chat examples (or trajectories, plans, reports, as dr "
        "data sft reads them), packed into --max-len rows. Checkpoints are Hugging Face folders; "
        "--resume continues exactly."
    ),
    "rl": (
        "RL (GRPO or PPO) on research tasks, with rollouts through the real agent loop and tools. Tasks"
        " are Task JSONL, questions and report tasks mixed as given. The policy researches each task "
        "--group times; each run is rewarded (questions by their exact answer; reports by their "
        "checklist, with the rules or a judge model, the rules' score logged beside it); a run the "
        "judge abstains on is dropped from its group; updates use only the tokens the policy sampled. "
        "Writes metrics.jsonl and Hugging Face checkpoints like sft. With --nproc N every rank holds "
        "the whole policy, runs a share of each step's rollouts and of each minibatch, and DeepSpeed "
        "reduces the gradients (ZeRO-1/2 split the optimizer state and gradients)."
    ),
}
CONFIGS: dict[str, type[BaseModel]] = {"midtrain": MidtrainConfig, "sft": SFTConfig, "rl": RLRecipeConfig}


def _run(recipe: str, flags: dict[str, Any]) -> None:
    """Read the recipe's config (flags over the config file) and run it; exits with its status."""
    from dr_core.log import stdout_for_data_only
    from dr_train.recipes import recipe as find
    from dr_train.recipes.common import launch, read_config

    cls, run = find(recipe)
    config = read_config(cls, recipe, flags)
    with stdout_for_data_only() as data:
        status = launch(recipe, config, run, data)
    if status:
        raise typer.Exit(status)


def _runner(recipe: str) -> Callable[[dict[str, Any]], None]:
    return lambda flags: _run(recipe, flags)


for _name, _config in CONFIGS.items():
    config_command(app, _name, _config, _runner(_name), help=HELP[_name], arguments={"inputs": Inputs})
