"""Image-question jobs expanded into batch input lines; folder listing; prompt templates."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.batches.config import REPO_TEMPLATES
from app.batches.jobs import (
    ImageQuestionsJob,
    folder_images,
    job_lines,
    load_template,
    prompt_environment,
)
from app.errors import InvalidRequestError


async def lines_of(job: ImageQuestionsJob, images: list[str], template: Any = None) -> list[Any]:
    data = b"".join([chunk async for chunk in job_lines(job, images, template)])
    return [json.loads(line) for line in data.splitlines()]


async def test_images_times_questions() -> None:
    job = ImageQuestionsJob(
        images=["a"], questions=["What?", "Where?"], thinking_budget=128, max_tokens=300
    )
    images = [f"https://example.com/{i}.jpg" for i in range(12)]
    lines = await lines_of(job, images)
    assert len(lines) == 24
    assert [x["custom_id"] for x in lines[:3]] == ["img01-q1", "img01-q2", "img02-q1"]
    assert lines[-1]["custom_id"] == "img12-q2"
    first = lines[0]
    assert first["method"] == "POST" and first["url"] == "/v1/chat/completions"
    body = first["body"]
    content = body["messages"][-1]["content"]
    # the image first, then the question: the image's prefix is shared by its questions
    assert content == [
        {"type": "image_url", "image_url": {"url": "https://example.com/0.jpg"}},
        {"type": "text", "text": "What?"},
    ]
    assert body["thinking"] is True and body["thinking_budget"] == 128
    assert body["max_tokens"] == 300
    assert "response_format" not in body


async def test_schema_system_and_model() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    job = ImageQuestionsJob(
        images=["a"], questions=["How many?"], response_schema=schema, system="Count.", model="m"
    )
    [line] = await lines_of(job, ["data:image/png;base64,AAAA"])
    body = line["body"]
    assert body["messages"][0] == {"role": "system", "content": "Count."}
    assert body["model"] == "m"
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


async def test_templates_render_per_image_and_question() -> None:
    env = prompt_environment(REPO_TEMPLATES)
    template = load_template(env, "inventory.jinja")
    job = ImageQuestionsJob(images=["a"], questions=["Is it old?"], template="inventory.jinja")
    [line] = await lines_of(job, ["/srv/photos/attic/box.jpg"], template)
    text = line["body"]["messages"][-1]["content"][1]["text"]
    assert "Catalogue this photo (box.jpg)." in text
    assert text.endswith("Also answer: Is it old?")
    described = load_template(env, "describe.jinja")
    alone = ImageQuestionsJob(images=["a"], template="describe.jinja")
    [plain] = await lines_of(alone, ["https://x/y.png"], described)
    assert plain["body"]["messages"][-1]["content"][1]["text"].startswith("Describe this photo")


def test_template_errors_are_400s(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "broken.jinja").write_text("{% if %}")
    env = prompt_environment(tmp_path)
    with pytest.raises(InvalidRequestError, match="syntax error"):
        load_template(env, "broken.jinja")
    with pytest.raises(InvalidRequestError, match="no prompt template"):
        load_template(env, "absent.jinja")


def test_sandboxed_templates_cannot_reach_python(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "evil.jinja").write_text(
        "{{ image.__class__.__mro__[1].__subclasses__() }}"
    )
    template = load_template(prompt_environment(tmp_path), "evil.jinja")
    job = ImageQuestionsJob(images=["a"], template="evil.jinja")
    from app.batches.jobs import job_prompts

    with pytest.raises(InvalidRequestError, match="failed"):
        job_prompts(job, template, {"index": 1, "source": "x", "name": "x"})


@pytest.mark.parametrize(
    "fields",
    [
        {"questions": ["q"]},
        {"images": ["a"]},
        {"images": ["a"], "questions": [" "]},
        {"images": [""], "questions": ["q"]},
        {"images": ["a"], "template": "../../etc/passwd"},
        {"images": ["a"], "template": "x.txt"},
        {"images": ["a"], "questions": ["q"], "thinking_budget": 0},
        {"images": ["a"], "questions": ["q"], "unknown": 1},
    ],
)
def test_job_validation(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ImageQuestionsJob.model_validate(fields)


def test_folder_listing_stays_inside_the_allowed_directories(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "deeper").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("b.jpg", "a.PNG", "c.txt"):
        (allowed / name).write_bytes(b"x")
    (allowed / "deeper" / "d.webp").write_bytes(b"x")
    (outside / "secret.jpg").write_bytes(b"x")
    os.symlink(outside, allowed / "link")
    flat = folder_images(str(allowed), [allowed], recursive=False, limit=100)
    assert flat == [str(allowed / "a.PNG"), str(allowed / "b.jpg")]
    deep = folder_images(str(allowed), [allowed], recursive=True, limit=100)
    assert str(allowed / "deeper" / "d.webp") in deep
    assert not any("secret" in path for path in deep)  # os.walk does not follow the link
    with pytest.raises(InvalidRequestError, match="outside"):
        folder_images(str(allowed / "link"), [allowed], recursive=False, limit=100)
    with pytest.raises(InvalidRequestError, match="outside"):
        folder_images(str(allowed / ".." / "outside"), [allowed], recursive=False, limit=100)
    with pytest.raises(InvalidRequestError, match="not enabled"):
        folder_images(str(allowed), [], recursive=False, limit=100)
    with pytest.raises(InvalidRequestError, match="at most 1"):
        folder_images(str(allowed), [allowed], recursive=False, limit=1)
