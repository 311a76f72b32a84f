"""dr-train's recipes: `run(config)` for midtrain, sft and rl, each with its pydantic config.

The `dr train` commands only turn flags into a config and call a recipe; `python -m dr_train RECIPE
CONFIG.json` runs one from a config file (torchrun starts each rank that way); a notebook or a test calls
`run` directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dr_train.recipes.common import RunSettings


def recipe(name: str) -> tuple[type[RunSettings], Callable[[Any], Any]]:
    """(config class, run) of the recipe called `name`."""
    if name == "midtrain":
        from dr_train.recipes import midtrain

        return midtrain.MidtrainConfig, midtrain.run
    if name == "sft":
        from dr_train.recipes import sft

        return sft.SFTConfig, sft.run
    if name == "rl":
        from dr_train.recipes import rl

        return rl.RLRecipeConfig, rl.run
    raise KeyError(f"no recipe {name!r}: choose midtrain, sft or rl")
