"""Sample records for data tests: answered trajectories on distinct topics."""

from __future__ import annotations

TOPICS = [
    "river ports",
    "glassmaking",
    "salt trade",
    "clock towers",
    "printing presses",
    "botanical gardens",
    "canal locks",
    "lighthouses",
    "textile mills",
    "observatories",
]


def trajectory(i: int, question: str, answer: str) -> dict:
    return {
        "id": f"traj-{i}",
        "task_id": f"t{i}",
        "messages": [
            {"role": "system", "content": "You are a research agent."},
            {"role": "user", "content": question},
            {
                "role": "assistant",
                "content": "Searching first.",
                "tool_calls": [{"id": "c1", "name": "search", "arguments": {"queries": [question]}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "[d1] result"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c2", "name": "answer", "arguments": {"text": answer}}],
            },
            {"role": "tool", "tool_call_id": "c2", "content": "Answer recorded."},
        ],
        "tools": [{"type": "function", "function": {"name": "search"}}],
        "final": answer,
        "stop_reason": "answered",
    }


def distinct(i: int) -> dict:
    topic = TOPICS[i]
    question = (
        f"Describe how {topic} shaped the economy of the northern provinces after the flood of {1800 + i}."
    )
    answer = (
        f"{topic.capitalize()} grew quickly: records from {1800 + i} show new {topic} in {i + 3} towns. "
        f"Merchants in the valley invested their savings after the waters receded in year {i}, "
        f"and by {1810 + i} the guilds of the {i + 2} largest towns had formed a common board for {topic}. "
        f"Taxes on {topic} paid for new roads, bridges and a school of engineering in the provincial capital, "
        f"whose archive keeps {i + 40} ledgers from those decades."
    )
    return trajectory(i, question, answer)
