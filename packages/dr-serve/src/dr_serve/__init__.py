"""dr-serve: inference-engine launchers (vLLM, transformers serve) and the research API."""
