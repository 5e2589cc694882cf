"""A background response (`background: true`) made by a worker, through the same path as the
`/v1/responses` door (`app.agent.responses_turn`).

The door stored the response as `queued` and queued its request; a worker that takes it calls
`start` (the response is now `in_progress`; 0 means it may not run: cancelled, finished or
gone), then `run`, or `fail` for a failure that is the response's end. While the run goes on,
the stored status is read every `cancel_poll` seconds: once it is no longer `in_progress` (a
cancel, or another run of the same response finished first) the runtime request is aborted and
the run stopped. The final state is written by compare-and-set (`ResponseStore.finish`), so it
never replaces a cancel and is written once however often the response ran.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from app.agent.loop import AgentRun
from app.agent.models import RunResult
from app.agent.responses_protocol import parse_responses_request
from app.agent.responses_turn import ResponsesServices, open_turn, response_store
from app.agent.turn import PartsIngest
from app.errors import CascadeError, InvalidRequestError, NotFoundError
from app.jsonbody import JsonBodyError, parse_json
from app.sessions.responses_store import IN_PROGRESS, StoredResponse

log = structlog.get_logger(__name__)


def failed_body(queued: dict[str, Any], error: CascadeError) -> dict[str, Any]:
    """The `failed` Response of a queued one, with an OpenAI-shaped `error` (a client-safe
    message: cascade's errors carry no internals)."""
    return {
        **queued,
        "status": "failed",
        "error": {"code": "server_error", "message": error.message},
    }


class BackgroundResponse:
    """One delivery of a queued background response to a worker (see the module docstring)."""

    def __init__(
        self,
        services: ResponsesServices,
        *,
        response_id: str,
        owner: str,
        request: bytes,
        cancel_poll: float = 0.2,
    ) -> None:
        self.services = services
        self.store = response_store(services)
        self.response_id = response_id
        self.owner = owner
        self.request = request  # the body its client sent, validated by the door
        self.cancel_poll = cancel_poll

    async def start(self) -> int:
        """Mark it `in_progress`: how many times it was started (this one included), or 0
        when it may not run (cancelled, finished or gone)."""
        return await self.store.start(self.owner, self.response_id)

    async def run(self, *, priority: int | None = None, ingest: PartsIngest | None = None) -> str:
        """Make the response and store its end; the status it has now: `completed` or
        `incomplete` when this run stored it, else what stopped the run (`cancelled`, the
        status another run stored, or `gone` when it was deleted). Errors propagate (the
        caller decides between waiting for the runtime and `fail`)."""
        try:
            queued = await self.store.get(self.owner, self.response_id)
        except NotFoundError:
            return "gone"  # deleted (or expired) since it started
        if queued.body["status"] != IN_PROGRESS:
            return str(queued.body["status"])
        try:
            data = parse_json(self.request)
        except JsonBodyError as exc:
            raise InvalidRequestError(f"the queued request body: {exc}", param="body") from None
        req = parse_responses_request(data)
        shell = {**queued.body, "status": IN_PROGRESS}
        turn = await open_turn(self.services, req, self.owner, shell=shell)
        assembled, inputs = await turn.assemble(stream=False, priority=priority, ingest=ingest)
        result = await self._watched(assembled.run)
        if result is None:
            return await self._status()
        body = turn.body(result, inputs)
        stored = turn.stored(result, body)
        # The input items keep the ids the queued response was given (and listed with).
        stored.input_items = queued.input_items
        if await self.store.finish(self.owner, stored):
            return str(body["status"])
        return await self._status()

    async def fail(self, error: CascadeError) -> bool:
        """End it as `failed` with `error`; false when it was no longer in progress (or is
        gone)."""
        try:
            queued = await self.store.get(self.owner, self.response_id)
        except NotFoundError:
            return False
        stored = StoredResponse(
            body=failed_body(queued.body, error), input_items=queued.input_items, history=[]
        )
        return await self.store.finish(self.owner, stored)

    async def _status(self) -> str:
        return await self.store.status(self.owner, self.response_id) or "gone"

    async def _watched(self, run: AgentRun) -> RunResult | None:
        """The run's result, or None when the stored status left `in_progress` first. A run
        stopped early (so, too, when this delivery is cancelled: a worker's drain) has its
        runtime request aborted."""
        task = asyncio.create_task(run.run())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.cancel_poll)
                if done:
                    return task.result()
                if await self.store.status(self.owner, self.response_id) != IN_PROGRESS:
                    log.info("background_response_stopped", response_id=self.response_id)
                    return None
        finally:
            if not task.done():
                rid = run.current_rid
                if rid is not None:
                    await asyncio.shield(self._abort(rid))
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _abort(self, rid: str) -> None:
        try:
            await self.services.turn.runtime.abort(rid)
        except Exception as exc:  # the runtime may be gone already
            log.warning("abort_failed", rid=rid, exc_type=type(exc).__name__)
