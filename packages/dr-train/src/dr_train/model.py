"""Which model and tokenizer a run trains: a local Hugging Face folder, a named tiny config, or a config JSON.

`tiny:qwen2` (and the other TINY names) and config JSONs are initialized at random from the seed; their
tokenizer is a byte-level BPE learnt from the training data unless `--tokenizer` names one. Context
extension (rope theta, YaRN / linear / dynamic scaling) is set on the config so it is saved with every
checkpoint and a server loads the model with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_core.errors import InputError

# Shapes named by `--model tiny:NAME`. tiny:qwen2 is what the tests and the demo train from scratch on one
# CPU: small enough for seconds per step, big enough to learn the world's tool-calling format.
TINY: dict[str, dict[str, Any]] = {
    "qwen2": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "qwen2-mini": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
    },
    # head size 64, which vLLM's CPU attention takes (tests of vLLM rollouts and serving)
    "qwen2-h64": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    },
    "qwen2-small": {
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
    },
    "qwen2.5-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
    },
    "qwen2.5-7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
    },
}
ROPE_TYPES = ("linear", "dynamic", "yarn")


@dataclass
class RopeSettings:
    """Context extension for the long-context stage."""

    theta: float | None = None
    scaling: str | None = None  # "yarn:4", "linear:2", "dynamic:4"
    max_positions: int | None = None

    def parsed_scaling(self) -> tuple[str, float] | None:
        if not self.scaling:
            return None
        kind, _, factor = self.scaling.partition(":")
        try:
            value = float(factor)
        except ValueError:
            value = -1.0
        if kind not in ROPE_TYPES or value <= 1.0:
            raise InputError(
                f"--rope-scaling {self.scaling!r}: write TYPE:FACTOR with TYPE one of "
                f"{', '.join(ROPE_TYPES)} and FACTOR above 1, e.g. yarn:4"
            )
        return kind, value


def apply_rope(config: Any, rope: RopeSettings) -> None:
    """Set rope theta / scaling on a transformers config (5.x keeps both in `rope_parameters`)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    theta = rope.theta or params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    original = config.max_position_embeddings
    params["rope_theta"] = float(theta)
    scaling = rope.parsed_scaling()
    if scaling:
        kind, factor = scaling
        params.update(rope_type=kind, factor=factor)
        if kind == "yarn":
            params["original_max_position_embeddings"] = params.get(
                "original_max_position_embeddings", original
            )
        config.max_position_embeddings = rope.max_positions or int(original * factor)
    elif rope.max_positions:
        config.max_position_embeddings = rope.max_positions
    params.setdefault("rope_type", "default")
    config.rope_parameters = params


def is_checkpoint(spec: str) -> bool:
    """A Hugging Face folder, or the name of a model a package ships (dr_core.models.NAMED)."""
    from dr_core.models import NAMED

    return spec in NAMED or (Path(spec) / "config.json").is_file()


def load_tokenizer(spec: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"tokenizer {spec!r} could not be loaded ({str(exc).splitlines()[0]}); give a local folder "
            "with tokenizer files, or --tokenizer train to learn one from the data"
        ) from None
    if tokenizer.eos_token_id is None:
        raise InputError(f"tokenizer {spec!r} has no end-of-sequence token; documents need one")
    return tokenizer


def _config_for(spec: str) -> Any:
    from transformers import AutoConfig, Qwen2Config

    from dr_core.models import NAMED

    if spec.startswith("tiny:"):
        name = spec.removeprefix("tiny:")
        if name not in TINY:
            raise InputError(f"--model {spec}: known tiny models are {', '.join('tiny:' + n for n in TINY)}")
        shape = {"num_key_value_heads": 2, "tie_word_embeddings": True, **TINY[name]}
        return Qwen2Config(max_position_embeddings=32768, **shape)
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text())
            return AutoConfig.for_model(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"--model {spec}: not a transformers config ({exc})") from None
    raise InputError(
        f"--model {spec!r}: give a local Hugging Face folder (with config.json), a config JSON file, a "
        f"model a package ships ({', '.join(NAMED)}), or a tiny model "
        f"({', '.join('tiny:' + n for n in TINY)}); nothing is downloaded"
    )


def build(
    spec: str,
    tokenizer_spec: str | None,
    texts: Callable[[], list[str]],
    rope: RopeSettings,
    seed: int,
    vocab_size: int = 2048,
    dtype: Any = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) for a run. `texts` supplies the data a tokenizer is learnt from, when one is."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from dr_core.models import resolve
    from dr_train.tiny import train_tokenizer

    spec = resolve(spec)  # a named model (smollm2-135m): its converted folder
    if is_checkpoint(spec):
        tokenizer = load_tokenizer(tokenizer_spec or spec)
        config = AutoConfig.from_pretrained(spec)
        apply_rope(config, rope)
        model = AutoModelForCausalLM.from_pretrained(spec, config=config, dtype=dtype or torch.float32)
        return model, tokenizer
    config = _config_for(spec)
    if tokenizer_spec in (None, "train"):
        tokenizer = train_tokenizer(texts(), vocab_size=vocab_size)
    else:
        tokenizer = load_tokenizer(tokenizer_spec)
    config.vocab_size = len(tokenizer)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    apply_rope(config, rope)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, max_new_tokens=512
    )
    return model, tokenizer
