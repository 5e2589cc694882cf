"""The composition root: the long-lived services one process owns (the API, or a batch
worker), built once by `open_services` and handed on as one typed `Services` object.

They are the runtime client (and its budget guard), the session store, idempotency keys, the
ledger of stateless turns, image intake and files, the batch store, the tool registry with its
operator policy, the MCP servers, and the turn engine's view of them (`turn`). `open_services`
starts them (MCP discovery included); `Services.aclose` stops them in reverse order. Nothing
else builds any of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog

from app.agent.turn import TurnServices
from app.batches.config import BatchSettings, load_batch_settings
from app.batches.store import BatchStore
from app.config import Settings
from app.media.config import MediaSettings
from app.media.files import FileStore
from app.media.intake import ImageIntake
from app.runtime import SGLangClient, build_runtime
from app.runtime.guard import GuardedRuntime
from app.sealed import SealedBox, derive_key
from app.sessions.config import SessionSettings
from app.sessions.idempotency import IdempotencyStore
from app.sessions.ledger import Ledger
from app.sessions.lock import settle_releases
from app.sessions.responses_store import ResponseStore
from app.sessions.store import SessionStore
from tools import build_registry, load_tool_settings
from tools.registry import ToolPolicy, ToolRegistry

log = structlog.get_logger(__name__)


@dataclass
class Services:
    settings: Settings
    runtime_client: SGLangClient
    runtime: GuardedRuntime
    redis: aioredis.Redis | None
    turn: TurnServices
    batch_settings: BatchSettings
    batch_store: BatchStore | None
    sealer: SealedBox | None
    sessions: SessionStore | None
    idempotency: IdempotencyStore | None
    responses: ResponseStore | None
    ledger: Ledger | None
    media: ImageIntake | None
    files: FileStore | None
    media_settings: MediaSettings
    registry: ToolRegistry
    policy: ToolPolicy
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        await settle_releases(1.0)  # turn locks released late, while Redis is still open
        for closer in reversed(self.closers):
            try:
                await closer()
            except Exception as exc:  # shutdown goes on; the log says what failed
                log.warning("service_close_failed", exc_type=type(exc).__name__)


def check_settings() -> None:
    """Validate every settings class now (at start), so a bad variable stops the process with
    a message naming it instead of failing on first use."""
    SessionSettings.load()
    MediaSettings.load()
    load_tool_settings()
    BatchSettings.load()


async def open_services(
    redis: aioredis.Redis | None,
    settings: Settings,
    *,
    media_settings: MediaSettings | None = None,
    batch_settings: BatchSettings | None = None,
    batch_store_type: type[BatchStore] = BatchStore,
) -> Services:
    """Open the services over `redis` (None: no Redis, so no sessions, files or batches).

    The caller owns `redis` (it is not closed here); everything opened here is closed by
    `Services.aclose`. The keyword arguments replace settings read from the environment.
    """
    session_settings = SessionSettings.load()
    media_settings = media_settings or MediaSettings.load()
    batch_settings = batch_settings or load_batch_settings()
    tool_settings = load_tool_settings()
    registry = build_registry(tool_settings, media_settings=media_settings)
    files = (
        FileStore(redis, settings.state_dir / "files", media_settings)
        if redis is not None
        else None
    )
    media = ImageIntake(redis, media_settings, files=files) if redis is not None else None
    policy = tool_settings.policy()
    ledger = Ledger(redis, session_settings) if redis is not None else None
    runtime_client, runtime = build_runtime(settings)
    services = Services(
        settings=settings,
        runtime_client=runtime_client,
        runtime=runtime,
        redis=redis,
        turn=TurnServices(
            settings=settings,
            runtime=runtime,
            registry=registry,
            policy=policy,
            media=media,
            redis=redis,
            ledger=ledger,
        ),
        batch_settings=batch_settings,
        sealer=(
            SealedBox(derive_key(settings.secret_key.get_secret_value()))
            if settings.secret_key is not None
            else None
        ),
        batch_store=(
            batch_store_type(redis, prefix=batch_settings.key_prefix) if redis is not None else None
        ),
        sessions=SessionStore(redis, session_settings) if redis is not None else None,
        idempotency=IdempotencyStore(redis, session_settings) if redis is not None else None,
        responses=ResponseStore(redis, session_settings) if redis is not None else None,
        ledger=ledger,
        media=media,
        files=files,
        media_settings=media_settings,
        registry=registry,
        policy=policy,
    )
    services.closers.append(runtime_client.aclose)
    if tool_settings.mcp_servers:
        # Imported here: the MCP client stack is heavy and most installs have no MCP servers.
        from tools.mcp import McpManager

        manager = McpManager(
            tool_settings.mcp_servers,
            registry,
            default_timeout=tool_settings.tool_timeout,
            max_output_chars=tool_settings.tool_max_output_chars,
        )
        await manager.start()
        services.closers.append(manager.aclose)
        log.info("mcp_started", servers=manager.status())
    return services
