"""Prompt templates: R1-Zero (tags), the tokenizer's chat template with a system prompt, plain."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from r1jax.data.sources import DataError

# DeepSeek-R1 paper, Table 1 (the template R1-Zero was trained with).
R1_ZERO_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>.")
# Qwen2.5-Math's chain-of-thought system prompt.
QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """How a question becomes prompt text.

    Attributes:
      name: registry name.
      kind: "r1_zero" (instruction, "User: ...", "Assistant: <think>"), "chat" (the
        tokenizer's chat template with an optional system message), or "plain" (the question).
      system_prompt: the instruction (r1_zero) or system message (chat); None for none.
      completion_prefix: text the prompt already opened the response with; format rewards
        check `completion_prefix + completion`.
    """

    name: str
    kind: str
    system_prompt: Optional[str] = None
    completion_prefix: str = ""

    @property
    def uses_chat_template(self) -> bool:
        return self.kind == "chat"

    def render(self, question: str, tokenizer: Any = None) -> str:
        """Prompt text for one question.

        Raises:
          DataError: a chat template is needed but the tokenizer has none.
        """
        if self.kind == "plain":
            return question
        if self.kind == "r1_zero":
            prefix = f"{self.system_prompt}\n" if self.system_prompt else ""
            return f"{prefix}User: {question}\nAssistant: {self.completion_prefix}"
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DataError(f"template {self.name!r} needs a tokenizer with a chat template")
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


TEMPLATES = {
    "r1_zero": PromptTemplate("r1_zero", "r1_zero", R1_ZERO_INSTRUCTION, "<think>"),
    "qwen_math": PromptTemplate("qwen_math", "chat", QWEN_MATH_SYSTEM),
    "chat": PromptTemplate("chat", "chat"),
    "plain": PromptTemplate("plain", "plain"),
}


def make_template(name: str, system_prompt: Optional[str] = None) -> PromptTemplate:
    """A TEMPLATES entry, with its system prompt / instruction replaced when given.

    Raises:
      DataError: unknown name.
    """
    if name not in TEMPLATES:
        raise DataError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}")
    template = TEMPLATES[name]
    if system_prompt is not None:
        template = dataclasses.replace(template, system_prompt=system_prompt)
    return template
