"""The job file reference, generated from the model so the docs cannot drift from the code.

``python -m batchyard.analysis.job_reference`` rewrites the generated part of ``docs/job-file.md``; a test
fails when the committed file differs from what the model says.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from batchyard.core.job import Constraints, FinalStep, Inputs, Job, OutputSpec, ResourceFileSpec

BEGIN, END = "<!-- BEGIN GENERATED: python -m batchyard.analysis.job_reference -->", "<!-- END GENERATED -->"
SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("top level", Job),
    ("[inputs]", Inputs),
    ("[[resource_files]]", ResourceFileSpec),
    ("[[outputs]]", OutputSpec),
    ("[constraints]", Constraints),
    ("[final]", FinalStep),
)


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("batchyard.core.job.", "")
    text = text.replace("batchyard.core.job_parts.", "").replace("batchyard.core.final_step.", "")
    text = text.replace("<class '", "").replace("'>", "")
    return text.replace("|", "or").replace("Annotated[float, FieldInfo(annotation=NoneType, required=True, "
                                           "metadata=[Gt(gt=0)])]", "duration")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(see section)"
    return f"`{value!r}`" if value not in (None, (), {}) else "-"


def job_file_reference() -> str:
    lines = [BEGIN, ""]
    for title, model in SECTIONS:
        lines += [f"### {title}", "", "| field | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            desc = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def update(path: Path) -> bool:
    """Rewrite the generated part of ``path``; True if it changed."""
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    new = head + job_file_reference() + tail
    if new != text:
        path.write_text(new, encoding="utf-8")
        return True
    return False


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/job-file.md")
    print("updated" if update(target) else "up to date", target)
