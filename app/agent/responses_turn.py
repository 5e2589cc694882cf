"""One Responses API response made by the turn engine: what the `/v1/responses` door and the
background workers share (no HTTP here).

`open_turn` reads the chain a request continues (`previous_response_id`), checks the sealing
it asks for and translates it to a `ChatRequest`; every problem is the same 4xx whoever calls
it. `ResponseTurn` then assembles the run (`assemble_turn`), builds the `Response` body of its
result and stores it (`save`) when the response is stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from app.agent.models import RunResult
from app.agent.responses_protocol import (
    ENCRYPTED_REASONING,
    ChatTranslation,
    ResponsesRequest,
    Seal,
    Unseal,
    new_id,
    response_body,
    response_shell,
    to_chat_request,
)
from app.agent.turn import AssembledTurn, PartsIngest, TurnServices, assemble_turn
from app.errors import InvalidRequestError, NotFoundError
from app.sealed import SealedBox
from app.sessions.responses_store import ResponseStore, StoredResponse


@dataclass(frozen=True)
class ResponsesServices:
    """What making a response needs: the turn engine's services, the response store (None:
    no Redis, nothing is stored) and the sealer of reasoning (None: no server key)."""

    turn: TurnServices
    store: ResponseStore | None
    sealer: SealedBox | None


def response_store(services: ResponsesServices) -> ResponseStore:
    if services.store is None:
        raise NotFoundError("responses are not stored on this server (no Redis)")
    return services.store


class ResponseTurn:
    """One response being made: its request, translation, run and where it is stored."""

    def __init__(
        self,
        services: ResponsesServices,
        req: ResponsesRequest,
        owner: str,
        translation: ChatTranslation,
        previous: list[dict[str, Any]],
        shell: dict[str, Any],
        seal: Seal | None,
    ) -> None:
        self.services = services
        self.seal = seal  # set when the client asked for reasoning.encrypted_content
        self.req = req
        self.owner = owner
        self.translation = translation
        self.previous = previous  # the chain's stored history (without instructions)
        self.shell = shell  # the Response without output: id, model, creation time, echoes
        if services.store is None:
            self.shell["store"] = False

    async def assemble(
        self, *, stream: bool, priority: int | None = None, ingest: PartsIngest | None = None
    ) -> tuple[AssembledTurn, int]:
        """The assembled run, and how many of its messages are this turn's input."""
        assembled = await assemble_turn(
            self.services.turn,
            self.translation.request,
            owner=self.owner,
            stream=stream,
            history=self.translation.history,
            priority=priority,
            ingest=ingest,
        )
        # The run's messages start with this turn's input (normalised, images stored).
        return assembled, len(assembled.run.produced)

    def body(self, result: RunResult, inputs: int) -> dict[str, Any]:
        """The finished `Response` of `result` (`inputs`: as `assemble` counted them)."""
        return response_body(self.shell, result, result.new_messages[inputs:], seal=self.seal)

    def stored(self, result: RunResult, body: dict[str, Any]) -> StoredResponse:
        return StoredResponse(
            body=body,
            input_items=self.translation.input_items,
            history=[*self.previous, *result.new_messages],
        )

    async def save(self, result: RunResult, body: dict[str, Any]) -> None:
        if not self.shell["store"] or self.services.store is None:
            return
        await self.services.store.put(self.owner, self.stored(result, body))


async def open_turn(
    services: ResponsesServices,
    req: ResponsesRequest,
    owner: str,
    *,
    shell: dict[str, Any] | None = None,
) -> ResponseTurn:
    """The response `req` asks for, checked and translated (see the module docstring);
    `shell` is a queued response's own (its id, model and creation time), by default a new one.

    Only a response that ended (`completed` or `incomplete`) can be continued: one that is
    queued, in progress, failed or cancelled has no history to continue (a 400)."""
    previous: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        try:
            stored = await response_store(services).get(owner, req.previous_response_id)
        except NotFoundError:
            raise NotFoundError(
                f"no response {req.previous_response_id!r}",
                code="previous_response_not_found",
                param="previous_response_id",
            ) from None
        status = stored.body.get("status")
        if status not in ("completed", "incomplete"):
            raise InvalidRequestError(
                f"response {req.previous_response_id!r} is {status}: only a completed or "
                "incomplete response can be continued",
                param="previous_response_id",
            )
        previous = stored.history
    registry, policy = services.turn.registry, services.turn.policy
    names = registry.names() if registry is not None else []
    available = [n for n in names if policy.is_enabled(n)]
    seal, unseal = sealing(services.sealer, req, owner)
    translation = to_chat_request(
        req, stored_history=previous, available_server_tools=available, unseal=unseal
    )
    if shell is None:
        shell = response_shell(
            req,
            response_id=new_id("resp"),
            model=req.model or await services.turn.runtime.model_name(),
            created_at=int(time.time()),
        )
    return ResponseTurn(services, req, owner, translation, previous, shell, seal)


def sealing(
    box: SealedBox | None, req: ResponsesRequest, owner: str
) -> tuple[Seal | None, Unseal | None]:
    """Reasoning sealed for the owner (when asked for with `include`), and the opener of the
    blobs a stateless client hands back. Both need `CASCADE_SECRET_KEY`."""
    wanted = ENCRYPTED_REASONING in (req.include or [])
    if wanted and box is None:
        raise InvalidRequestError(
            "reasoning.encrypted_content needs a server key: the operator sets CASCADE_SECRET_KEY",
            param="include",
        )
    if box is None:
        return None, None

    def seal(text: str) -> str:
        return box.seal({"text": text}, owner=owner, purpose="reasoning")

    def unseal(blob: str, param: str) -> str:
        opened = box.open(blob, owner=owner, purpose="reasoning", param=param)
        text = opened.get("text") if isinstance(opened, dict) else None
        if not isinstance(text, str):
            raise InvalidRequestError("encrypted_content holds no reasoning", param=param)
        return text

    return (seal if wanted else None), unseal
