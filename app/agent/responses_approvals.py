"""Approvals in the Responses API: a paused write call as `mcp_approval_request` items, and a
client's `mcp_approval_response` items as the turn engine's own confirmation.

A run that pauses (`Paused`) marks its assistant message with a pause id cascade issued
(`meta.pause`, see `AgentRun._pause`). Each paused call of that message is one approval
request: the first one's id is the pause id, the k-th's (k >= 1) `{pause_id}_{k}`. Ids are
therefore only ever read from a stored chain, never taken from a client, and a client that
invents one finds it in no stored history.

Answering (`answer_approvals`), against the history of the stored previous response:

- every request of the chain's open pause must be answered, and nothing else;
- a declined call gets a `tool` result saying so (`DECLINED`, with the client's reason),
  added to the run's history before it starts, so the model is told and the call never runs;
- approved calls are confirmed the chat door's way, `confirm_tool_calls: [pause_id]`, so the
  loop runs exactly those (the declined ones have a result, so they are no longer open) under
  the operator's tool policy; approving needs an input of approval responses only, as the
  loop resumes a pause only in a turn without new messages;
- a pause is answered once (`ResponseStore.claim_approval`, taken by the door just before the
  run), so a second continuation of the same paused response is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.agent.loop import open_pause
from app.errors import InvalidRequestError

DECLINED = "[cascade] The user declined this tool call; it was not run."
MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class ApprovalRequest:
    """One paused call, as the client sees it."""

    id: str
    pause_id: str
    call_id: str
    name: str
    arguments: str


def approval_requests(message: dict[str, Any]) -> list[ApprovalRequest]:
    """The approval requests of one stored assistant message (none unless it paused)."""
    pause = (message.get("meta") or {}).get("pause")
    if not isinstance(pause, dict):
        return []
    calls = {c.get("id"): c for c in message.get("tool_calls") or []}
    out: list[ApprovalRequest] = []
    for k, call_id in enumerate(pause.get("call_ids") or []):
        call = calls.get(call_id)
        if call is None:
            continue
        pause_id = str(pause["id"])
        out.append(
            ApprovalRequest(
                id=pause_id if k == 0 else f"{pause_id}_{k}",
                pause_id=pause_id,
                call_id=call_id,
                name=call["function"]["name"],
                arguments=call["function"]["arguments"],
            )
        )
    return out


@dataclass
class Answers:
    """What a request's approval responses mean for the run."""

    declined: list[dict[str, Any]] = field(default_factory=list)  # tool results for history
    approved: list[ApprovalRequest] = field(default_factory=list)
    pause_id: str | None = None  # the pause answered (claimed by the door before the run)

    @property
    def confirm(self) -> list[str] | None:
        """`confirm_tool_calls` for the chat request: the pause, when a call was approved."""
        return [self.pause_id] if self.approved and self.pause_id else None


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def check_approval_item(item: dict[str, Any], at: str) -> None:
    """The shape of one `mcp_approval_response` input item."""
    if not isinstance(item.get("approval_request_id"), str) or not item["approval_request_id"]:
        raise _bad("approval_request_id must be a string", f"{at}.approval_request_id")
    if not isinstance(item.get("approve"), bool):
        raise _bad("approve must be true or false", f"{at}.approve")
    reason = item.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise _bad("reason must be a string", f"{at}.reason")


def answer_approvals(
    responses: Sequence[tuple[int, dict[str, Any]]],
    history: Sequence[dict[str, Any]] | None,
    *,
    other_input: int | None,
) -> Answers:
    """Resolve `(input index, mcp_approval_response item)` pairs against the stored chain's
    `history` (None: there is no stored previous response). `other_input` is the index of
    the first input item that is not an approval response, if any. See the module docstring."""
    if not responses:
        return Answers()
    first = f"input[{responses[0][0]}]"
    if history is None:
        raise _bad(
            "mcp_approval_response needs a stored previous response: send it with the "
            "previous_response_id of the response that asked for approval",
            f"{first}.approval_request_id",
        )
    issued = {
        r.id: r for m in history if m.get("role") == "assistant" for r in approval_requests(m)
    }
    pause = open_pause(history)
    open_ids = set(pause[2]) if pause is not None else set()
    answers = Answers()
    seen: set[str] = set()
    for index, item in responses:
        at = f"input[{index}].approval_request_id"
        request = issued.get(item["approval_request_id"])
        if request is None:
            raise _bad("this approval request was not issued in this response chain", at)
        if request.id in seen or request.call_id not in open_ids:
            raise _bad("this approval request is answered already", at)
        seen.add(request.id)
        answers.pause_id = request.pause_id
        if item["approve"]:
            answers.approved.append(request)
        else:
            reason = (item.get("reason") or "").strip()[:MAX_REASON_CHARS]
            text = f"{DECLINED} Reason: {reason}" if reason else DECLINED
            answers.declined.append(
                {"role": "tool", "tool_call_id": request.call_id, "content": text}
            )
    missing = [r.id for r in issued.values() if r.call_id in open_ids and r.id not in seen]
    if missing:
        raise _bad(
            "answer every approval request of the paused step together (missing: "
            f"{', '.join(missing)})",
            "input",
        )
    if answers.approved and other_input is not None:
        raise _bad(
            "approving a tool call resumes the paused step: send the approval responses "
            "without other input items",
            f"input[{other_input}]",
        )
    return answers


def check_resumed(answers: Answers, resumed: Sequence[Any]) -> None:
    """After assembly: the run resumes every approved call (`AgentRun.resumed`). A tool this
    request does not offer (other `tools` / `server_tools` than the paused request's) is not
    run by the loop, which must not pass silently."""
    if len(resumed) != len(answers.approved):
        names = ", ".join(sorted({r.name for r in answers.approved}))
        raise InvalidRequestError(
            f"the approved tool ({names}) is not offered in this request; send the same tools "
            "and server_tools as the request that asked for approval",
            param="server_tools",
        )
