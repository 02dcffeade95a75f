"""Prompt templates: the R1-Zero template of the paper and the tokenizer's own chat template.

``r1_zero``: Table 1 of the R1 paper, verbatim; the question goes in ``{prompt}``.
``chat``: ``tokenizer.apply_chat_template`` of an HF tokenizer over the row's ``messages`` (or a
single user message made from ``prompt``), with the generation prompt appended.
``plain``: the question as it is.
"""

from __future__ import annotations

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. User: {prompt}. Assistant:"
)
TEMPLATES = ("r1_zero", "chat", "plain")


def question_of(row: dict) -> str:
    """The question of a row: ``prompt``, or the content of the last user message."""
    if "prompt" in row:
        return row["prompt"]
    return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")


def messages_of(row: dict, system: str | None = None) -> list[dict]:
    """The row as chat messages (``messages``, or one user message), with an optional system one."""
    messages = list(row["messages"]) if "messages" in row else [{"role": "user", "content": row["prompt"]}]
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def r1_zero_prompt(question: str) -> str:
    """The R1-Zero prompt for ``question`` (a trailing period is not doubled)."""
    return R1_ZERO_TEMPLATE.format(prompt=question.strip().rstrip("."))


def chat_prompt(tokenizer, row: dict, system: str | None = None) -> str:
    """The row through ``tokenizer``'s chat template, ending with the assistant's turn."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; use template='r1_zero' or 'plain'")
    return tokenizer.apply_chat_template(messages_of(row, system), tokenize=False, add_generation_prompt=True)


def render_prompt(row: dict, template: str = "r1_zero", tokenizer=None, system: str | None = None) -> str:
    """The text the policy is prompted with for ``row`` under ``template`` (see module docstring)."""
    if template == "r1_zero":
        return r1_zero_prompt(question_of(row))
    if template == "chat":
        if tokenizer is None:
            raise ValueError("template='chat' needs a tokenizer")
        return chat_prompt(tokenizer, row, system)
    if template == "plain":
        return question_of(row)
    raise ValueError(f"unknown template {template!r}; one of {', '.join(TEMPLATES)}")
