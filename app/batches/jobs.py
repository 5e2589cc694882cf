"""Image-question jobs: many images, one or more questions each, expanded into a batch.

`POST /v1/jobs/image-questions` takes images (URLs, data URIs, uploaded `vision` file ids, or
absolute paths) and/or a server `folder` inside `CASCADE_LOCAL_IMAGE_DIRS`, plus questions
and/or a prompt template from `templates/prompts/`. Each (image, question) pair becomes one
chat-completion request line of a batch input file; the image comes first in the message so
the runtime's prefix cache shares it between the questions of the same image, and the media
intake fetches and processes each distinct image once.

A JSON schema for the answers (`response_schema`) applies to every question; a question given
as `{"text": ..., "response_schema": ...}` has its own instead. Each becomes the line's
`response_format` (json_schema, strict), checked by the turn engine like any chat request's;
such a line offers no server tools, so its first call already carries the format.

custom_ids are `img{i}-q{j}` (1-based image and question numbers, image numbers padded so they
sort). The input file is generated as a stream: a job over 100,000 images is never held whole.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import jinja2
import orjson
from jinja2.sandbox import SandboxedEnvironment
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from app.agent.structured import answer_format
from app.batches.models import window_seconds
from app.errors import InvalidRequestError
from app.jsonbody import bounded_depth

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
TEMPLATE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.jinja")


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


def _checked_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """A schema that is a valid JSON schema (ValueError otherwise)."""
    if schema is not None:
        try:
            answer_format(_schema_format(schema))
        except InvalidRequestError as exc:
            raise ValueError(exc.message.replace("json_schema.schema", "response_schema")) from None
    return schema


Schema = Annotated[
    dict[str, Any] | None, AfterValidator(bounded_depth), AfterValidator(_checked_schema)
]


class Question(BaseModel):
    """A question with its own answer schema."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    response_schema: Schema = None


class ImageQuestionsJob(BaseModel):
    """`POST /v1/jobs/image-questions`."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(default_factory=list)
    folder: str | None = None
    recursive: bool = False
    questions: list[str | Question] = Field(default_factory=list)
    template: str | None = None
    variables: Annotated[dict[str, Any], AfterValidator(bounded_depth)] = Field(
        default_factory=dict
    )
    system: str | None = None
    model: str | None = None
    thinking: bool | None = None
    thinking_budget: int | None = Field(default=None, ge=1)
    response_schema: Schema = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None

    @field_validator("images")
    @classmethod
    def _images(cls, value: list[str]) -> list[str]:
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise ValueError(f"images[{index}] must be a non-empty string")
        return [item.strip() for item in value]

    @field_validator("questions")
    @classmethod
    def _questions(cls, value: list[str | Question]) -> list[str | Question]:
        for index, item in enumerate(value):
            if not (item if isinstance(item, str) else item.text).strip():
                raise ValueError(f"questions[{index}] must not be empty")
        return value

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        window_seconds(value)
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None and not TEMPLATE_NAME_RE.fullmatch(value):
            raise ValueError("template must be a file name like describe.jinja")
        return value

    @model_validator(mode="after")
    def _check(self) -> ImageQuestionsJob:
        if not self.images and self.folder is None:
            raise ValueError("give images, a folder, or both")
        if not self.questions and self.template is None:
            raise ValueError("give questions, a template, or both")
        return self

    def question_texts(self) -> list[str]:
        return [q if isinstance(q, str) else q.text for q in self.questions]

    def schema_for(self, index: int) -> dict[str, Any] | None:
        """The answer schema of question `index` (0-based): its own, else the job's."""
        if index < len(self.questions):
            question = self.questions[index]
            if isinstance(question, Question) and question.response_schema is not None:
                return question.response_schema
        return self.response_schema

    def summary(self, image_count: int) -> dict[str, Any]:
        """What the batch object shows about the job (`job`)."""
        structured = self.response_schema is not None or any(
            isinstance(q, Question) and q.response_schema is not None for q in self.questions
        )
        return {
            "type": "image_questions",
            "images": image_count,
            "folder": self.folder,
            "questions": self.question_texts(),
            "template": self.template,
            "structured": structured,
        }


def prompt_environment(templates_dir: Path) -> SandboxedEnvironment:
    """Jinja2 for prompt templates: sandboxed, strict about undefined names."""
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(templates_dir / "prompts")),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )


def load_template(env: SandboxedEnvironment, name: str) -> jinja2.Template:
    try:
        return env.get_template(name)
    except jinja2.TemplateNotFound:
        raise InvalidRequestError(f"no prompt template {name!r}", param="template") from None
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidRequestError(
            f"prompt template {name!r} has a syntax error on line {exc.lineno}", param="template"
        ) from None


def folder_images(
    folder: str, allowed: Sequence[Path], *, recursive: bool, limit: int
) -> list[str]:
    """Absolute paths of the images in `folder` (sorted), which must lie inside `allowed`.

    The media intake checks each path again when it reads it (links cannot lead out).
    """
    if not folder.startswith("/") or "\x00" in folder:
        raise InvalidRequestError("folder must be an absolute path", param="folder")
    if not allowed:
        raise InvalidRequestError(
            "server folders are not enabled (the operator can allow directories with "
            "CASCADE_LOCAL_IMAGE_DIRS)",
            param="folder",
        )
    real = os.path.realpath(folder)
    bases = [os.path.realpath(base) for base in allowed]
    if not any(real == base or real.startswith(base.rstrip("/") + "/") for base in bases):
        raise InvalidRequestError("folder is outside the allowed directories", param="folder")
    if not os.path.isdir(real):
        raise InvalidRequestError("folder does not exist", param="folder")
    found: list[str] = []
    if recursive:
        for root, dirs, names in os.walk(real):
            dirs.sort()
            for name in sorted(names):
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    found.append(os.path.join(root, name))
                    if len(found) > limit:
                        raise _too_many(limit)
    else:
        with os.scandir(real) as entries:
            for entry in entries:
                if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                    found.append(entry.path)
                    if len(found) > limit:
                        raise _too_many(limit)
        found.sort()
    return found


def _too_many(limit: int) -> InvalidRequestError:
    return InvalidRequestError(f"a job may hold at most {limit} images", param="images")


async def job_images(job: ImageQuestionsJob, allowed: Sequence[Path], limit: int) -> list[str]:
    """Every image reference of the job: the listed ones, then the folder's."""
    images = list(job.images)
    if job.folder is not None:
        images += await asyncio.to_thread(
            folder_images, job.folder, allowed, recursive=job.recursive, limit=limit
        )
    if not images:
        raise InvalidRequestError("the job has no images", param="images")
    if len(images) > limit:
        raise _too_many(limit)
    return images


def _image_name(source: str) -> str:
    if source.startswith("data:"):
        return "inline image"
    return source.rstrip("/").rsplit("/", 1)[-1][:200] or source[:200]


def job_prompts(
    job: ImageQuestionsJob, template: jinja2.Template | None, image: dict[str, Any]
) -> list[str]:
    """The prompt texts for one image: one per question (rendered through the template when
    there is one), or the template alone when there are no questions."""
    questions: list[str | None] = [*job.question_texts()] or [None]
    if template is None:
        return [q for q in questions if q is not None]
    out = []
    for question in questions:
        try:
            text = template.render(question=question, image=image, variables=job.variables)
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(
                f"prompt template {job.template!r} failed: {exc.message or 'error'}",
                param="template",
            ) from None
        out.append(text.strip())
    return out


def request_body(
    job: ImageQuestionsJob, source: str, prompt: str, *, question: int = 0
) -> dict[str, Any]:
    """The chat-completion request for one (image, prompt) pair; `question` is the prompt's
    question number (0-based), which picks its answer schema."""
    messages: list[dict[str, Any]] = []
    if job.system:
        messages.append({"role": "system", "content": job.system})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": source}},
                {"type": "text", "text": prompt},
            ],
        }
    )
    body: dict[str, Any] = {"messages": messages}
    if job.model:
        body["model"] = job.model
    for name in ("thinking", "thinking_budget", "max_tokens", "temperature"):
        value = getattr(job, name)
        if value is not None:
            body[name] = value
    if job.thinking_budget is not None and job.thinking is None:
        body["thinking"] = True
    schema = job.schema_for(question)
    if schema is not None:
        body["response_format"] = _schema_format(schema)
        # Offered tools would keep the format off the first step (`app.agent.structured`):
        # a schema'd question is answered in one call, under the runtime's grammar.
        body["server_tools"] = []
    return body


async def job_lines(
    job: ImageQuestionsJob, images: Sequence[str], template: jinja2.Template | None
) -> AsyncIterator[bytes]:
    """The batch input file of a job, in chunks of whole JSONL lines."""
    width = max(1, len(str(len(images))))
    chunk: list[bytes] = []
    size = 0
    for i, source in enumerate(images, start=1):
        image = {"index": i, "source": source, "name": _image_name(source)}
        for j, prompt in enumerate(job_prompts(job, template, image), start=1):
            line = {
                "custom_id": f"img{i:0{width}d}-q{j}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": request_body(job, source, prompt, question=j - 1),
            }
            data = orjson.dumps(line) + b"\n"
            chunk.append(data)
            size += len(data)
        if size >= 1 << 18:
            yield b"".join(chunk)
            chunk, size = [], 0
            await asyncio.sleep(0)
    if chunk:
        yield b"".join(chunk)
