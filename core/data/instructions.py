"""Instruction data for text generation: prompt/response pairs, chat `messages`, or plain text.

A table (JSON Lines, CSV, TSV or Parquet) holds one of three layouts, found by column name:
- `prompt` and `response` columns (or instruction/question/input and output/answer/completion),
  with an optional `system` column;
- a `messages` column: a list of {"role", "content"} turns (ShareGPT's {"from", "value"} with
  human/gpt is read too), as JSON Lines lists or a JSON string in a CSV cell;
- a `text` column alone: plain text, every token learnt.

Every example is stored as a conversation (a JSON list of turns) or a text. Rows with an empty
prompt or response, a turn of an unknown role or no answer are left out and counted. The
quality report counts the examples, turns, duplicates and token lengths after the default
model's chat template, and how many would not fit its default context.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DatasetError

TASK = "text-generation"
PROMPT_NAMES = ("prompt", "instruction", "question", "input", "query")
RESPONSE_NAMES = ("response", "output", "answer", "completion", "reply")
MESSAGES_NAMES = ("messages", "conversation", "conversations")
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}
# The context a run uses unless --max-length says otherwise: longer examples are left out of it.
DEFAULT_CONTEXT = 512
MAX_EXAMPLES_SHOWN = 5


def layout(columns: list[str]) -> tuple[str, dict[str, str]] | None:
    """("chat", {"messages": column}), ("pairs", {"prompt", "response"[, "system"]}) or
    ("text", {"text": column}) from the column names, None when they fit no layout."""
    lower = {c.lower(): c for c in columns}
    messages = next((lower[n] for n in MESSAGES_NAMES if n in lower), None)
    if messages is not None:
        return "chat", {"messages": messages}
    prompt = next((lower[n] for n in PROMPT_NAMES if n in lower), None)
    response = next((lower[n] for n in RESPONSE_NAMES if n in lower), None)
    if prompt is not None and response is not None:
        found = {"prompt": prompt, "response": response}
        if "system" in lower:
            found["system"] = lower["system"]
        return "pairs", found
    if "text" in lower and len(columns) == 1:
        return "text", {"text": lower["text"]}
    return None


def read(path: Path) -> tuple[pd.DataFrame, str, dict[str, str]]:
    """The table, its layout and its columns; DatasetError when it has none of the layouts."""
    from core.data import text

    if path.suffix.lower() not in text.TEXT_SUFFIXES:
        raise DatasetError(f"{path.name}: {TASK} takes a JSON Lines, CSV, TSV or Parquet table")
    frame = text.read_table(path, fields=1, nested=MESSAGES_NAMES)
    found = layout([str(c) for c in frame.columns])
    if found is None:
        raise DatasetError(
            f"{path.name} has no instruction columns (it has: {', '.join(map(str, frame.columns[:10]))}); "
            "give prompt and response columns, a messages column of chat turns, or one text column"
        )
    return frame, found[0], found[1]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def _turns(value: Any, limit: int) -> tuple[list[dict[str, str]] | None, str]:
    """A cell of the messages column as turns, or (None, why it is left out); a turn holds at
    most `limit` characters."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None, "messages that are not a JSON list"
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        return None, "messages that are not a list of turns"
    turns = []
    for turn in value:
        if not isinstance(turn, dict):
            return None, "turns that are not {role, content} objects"
        role = ROLES.get(str(turn.get("role", turn.get("from", ""))).strip().lower())
        content = turn.get("content", turn.get("value"))
        if role is None:
            return None, "a turn whose role is not system, user or assistant"
        if not isinstance(content, str) or not content.strip():
            return None, "an empty turn"
        if len(content) > limit:
            return None, f"a turn over {limit:,} characters (ASCENT_MAX_CELL_CHARS)"
        turns.append({"role": role, "content": content})
    if not any(t["role"] == "assistant" for t in turns):
        return None, "no assistant turn to learn"
    return turns, ""


def examples(frame: pd.DataFrame, kind: str, columns: dict[str, str]) -> tuple[list[Any], Counter[str]]:
    """Each usable row as a conversation (list of turns) or a text, and why rows were left out."""
    from core.config import get_settings

    limit = get_settings().max_cell_chars
    kept: list[Any] = []
    dropped: Counter[str] = Counter()
    for row in frame.itertuples(index=False):
        cells = dict(zip(map(str, frame.columns), row, strict=True))
        if kind == "chat":
            turns, why = _turns(cells[columns["messages"]], limit)
            if turns is None:
                dropped[why] += 1
            else:
                kept.append(turns)
        elif kind == "pairs":
            prompt, response = _cell(cells[columns["prompt"]]), _cell(cells[columns["response"]])
            if not prompt.strip() or not response.strip():
                dropped["an empty prompt or response"] += 1
                continue
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            system = _cell(cells.get(columns.get("system", ""), "")) if "system" in columns else ""
            kept.append(([{"role": "system", "content": system}] if system.strip() else []) + turns)
        else:
            content = _cell(cells[columns["text"]])
            if content.strip():
                kept.append(content)
            else:
                dropped["an empty text"] += 1
    return kept, dropped


def _tokenizer() -> Any | None:
    """The default model's tokenizer (the converted SmolLM2 folder), None when it is not there."""
    try:
        from core.models.llm import smollm2_folder

        folder = smollm2_folder()
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    except Exception:
        return None


def token_lengths(items: list[Any]) -> tuple[np.ndarray, str]:
    """Tokens of each example as the default model reads it (its chat template applied), or
    words when that model is not installed."""
    tok = _tokenizer()
    if tok is None:
        words = [
            sum(len(t["content"].split()) for t in x) if isinstance(x, list) else len(x.split())
            for x in items
        ]
        return np.array(words, dtype=np.int64), "words"
    lengths = []
    for item in items:
        if isinstance(item, list):
            ids = tok.apply_chat_template(item, tokenize=True, return_dict=False)
            lengths.append(len(ids))
        else:
            lengths.append(len(tok(item)["input_ids"]) + 1)
    return np.array(lengths, dtype=np.int64), "SmolLM2 tokens"


def inspect(
    frame: pd.DataFrame, kind: str, columns: dict[str, str], source: str
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Stored rows (one `example` column of JSON), the schema and the quality report."""
    items, dropped = examples(frame, kind, columns)
    if not items:
        reasons = ", ".join(f"{n} with {why}" for why, n in dropped.most_common()) or "no rows"
        raise DatasetError(f"no usable example in {source} ({reasons})")
    if len(items) < 2:
        raise DatasetError(
            f"{source} holds one usable example; text generation needs two or more (one validates)"
        )
    from core.data.text import length_summary

    lengths, unit = token_lengths(items)
    p95 = float(np.percentile(lengths, 95))
    encoded = [json.dumps(x, ensure_ascii=False) for x in items]
    counts = Counter(encoded)
    duplicated = sum(n - 1 for n in counts.values())
    over = int((lengths > DEFAULT_CONTEXT).sum()) if unit != "words" else 0
    turns = [len(x) if isinstance(x, list) else 1 for x in items]
    report = {
        "rows": len(frame),
        "examples": len(items),
        "layout": kind,
        "columns": columns,
        "left_out": dict(dropped),
        "duplicate_examples": duplicated,
        "turns": {"min": min(turns), "max": max(turns), "mean": float(np.mean(turns))},
        "length_unit": unit,
        "length_tokens": length_summary(lengths),
        "context": DEFAULT_CONTEXT,
        "over_context": over,
        "examples_shown": [_preview(x) for x in items[:MAX_EXAMPLES_SHOWN]],
    }
    schema = {
        "task": TASK,
        "layout": kind,
        "columns": columns,
        "source": source,
        "p95_tokens": p95,
        "max_tokens": int(lengths.max()),
    }
    return pd.DataFrame({"example": encoded}), schema, report


def _preview(item: Any) -> dict[str, str]:
    if isinstance(item, str):
        return {"text": item[:300]}
    prompt = next((t["content"] for t in reversed(item) if t["role"] == "user"), "")
    answer = next((t["content"] for t in reversed(item) if t["role"] == "assistant"), "")
    return {"prompt": prompt[:300], "response": answer[:300]}


def load(path: Path) -> list[Any]:
    """A stored dataset's examples: conversations (lists of turns) or texts."""
    frame = pd.read_parquet(path / "data.parquet")
    return [json.loads(x) for x in frame["example"]]
