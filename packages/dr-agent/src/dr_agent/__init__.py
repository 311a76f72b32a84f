"""dr-agent: the ReAct research agent (plan, search, open, verify, write) and its search backends."""
