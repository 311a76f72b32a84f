"""dr-core: the ground every dr package stands on.

Records (`dr_core.records`), JSONL pipes (`dr_core.jsonl`, `dr_core.pipe`), settings (`dr_core.config`),
errors (`dr_core.errors`), logging and progress on stderr (`dr_core.log`) and the OpenAI-compatible
LLM client (`dr_core.llm`). Import the module you need; this file stays light so `dr --help` is fast.
"""

__version__ = "0.1.0"
