"""Exception types raised at package edges; the `dr` command turns them into messages and exit codes.

Library code raises these with a message a user can act on (what, where, what to do); only the CLI
prints them and exits.
"""

from __future__ import annotations


class DrError(Exception):
    """Base of every error a user should see as a one-line message rather than a traceback."""

    exit_code = 1


class InputError(DrError):
    """Bad input data: a malformed JSONL line, a record that does not validate, a missing file."""

    exit_code = 2


class ConfigError(DrError):
    """A setting that does not parse or validate, from a flag, an environment variable or a TOML file."""

    exit_code = 2


class LLMError(DrError):
    """An LLM endpoint that failed after retries, or answered with something that is not a completion."""

    exit_code = 3

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DeadlineExceeded(LLMError):
    """A model call that found no reply within the time its caller had left (an agent run's --max-time)."""


class ReplyCutOff(LLMError):
    """A structured reply that stopped at the token limit (finish_reason "length") before it was usable:
    sending it back would be cut off again, so a caller records that it got no answer."""


class MissingDependency(DrError):
    """An optional engine (vllm, flash-attn, deepspeed, ...) a command needs is not installed."""

    exit_code = 4


class PipeClosed(DrError):
    """The reader of stdout went away (`dr ... | head`): stop quietly, it is not a failure."""

    exit_code = 0
