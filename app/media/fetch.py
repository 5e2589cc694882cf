"""SSRF-safe HTTP GET: for image URLs and for any tool that fetches a URL for the model.

`safe_fetch` (or a reusable `SafeFetcher`) does, for the URL and for every redirect hop:
  1. check the URL's form against the `FetchPolicy` (http/https, no credentials, deny list);
  2. resolve the host ONCE with the injectable resolver and check every address;
  3. connect to a checked address itself: the request goes to `http(s)://<ip>:<port>/…` with the
     original `Host` header and, for https, the `sni_hostname` extension, so TLS still sends and
     verifies the real host name. There is no second lookup a rebinding DNS server could answer;
  4. follow redirects by hand (at most `max_redirects`): a `Location` that is no URL or names
     another scheme (`data:`, `mailto:`) is refused; `Authorization`, `Cookie` and
     `Proxy-Authorization` are dropped once the origin changes;
  5. check `Content-Length` before reading, and count bytes while streaming (decoded bytes, so a
     compressed body cannot expand past the cap); everything runs under one total time cap, so
     a server trickling a body byte by byte fails at the deadline.
Proxies from the environment are ignored (a proxy would resolve the name again).
Every failure is a `FetchError` (a 400) whose message names the problem; an exception of the
HTTP stack that is not one of the failures named here is still turned into one, never a 500.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import httpx
import structlog

from app import __version__
from app.media.errors import FetchError, FetchTooLargeError, URLNotAllowedError, human_bytes
from app.media.ssrf import FetchPolicy, IPAddress, Target, plain_address

log = structlog.get_logger(__name__)

Resolver = Callable[[str], Awaitable[list[str]]]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
USER_AGENT = f"cascade/{__version__} (+fetch)"
_CHUNK = 64 * 1024


async def system_resolver(host: str) -> list[str]:
    """The host's addresses from the system resolver (getaddrinfo), in its order, unique."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    found: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


@lru_cache(maxsize=1)
def _default_ssl_context() -> ssl.SSLContext:
    # Building a context loads the CA bundle (tens of ms): do it once per process.
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


@dataclass(frozen=True)
class FetchResult:
    """A fetched response: final URL, status, headers and the whole (capped) body."""

    url: str
    status: int
    headers: httpx.Headers
    content: bytes
    redirects: tuple[str, ...] = field(default=())

    @property
    def media_type(self) -> str:
        """The Content-Type without parameters, lower case ("" when absent)."""
        return _media_type(self.headers)

    def text(self) -> str:
        """The body as text, in the declared charset (UTF-8 if none), undecodable bytes replaced."""
        charset = "utf-8"
        for param in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip('"')
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")


# Every exception type the HTTP stack raises besides `FetchError` and `TimeoutError`.
_UNEXPECTED = (
    httpx.HTTPError,
    httpx.InvalidURL,
    httpx.StreamError,
    httpx.CookieConflict,
    UnicodeError,
    ValueError,
    OverflowError,
    OSError,
)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_BAD_LOCATION_CHARS = re.compile(r"[\x00-\x20\x7f]")


def _redirect_url(base: httpx.URL, location: str, *, what: str) -> str:
    """The absolute URL a redirect's `Location` names, resolved against `base` (RFC 3986).

    A scheme other than http(s) (`data:`, `mailto:`, `file:`) is a `URLNotAllowedError`; a value
    that is not a URL reference (whitespace or control characters, unparsable) a `FetchError`.
    The result still has to pass `FetchPolicy.parse_url`.
    """
    value = location.strip()
    if not value or _BAD_LOCATION_CHARS.search(value):
        raise FetchError(f"{what} is not a valid URL", code="invalid_url")
    scheme = _SCHEME.match(value)
    if scheme is not None and scheme.group(1).lower() not in ("http", "https"):
        raise URLNotAllowedError(f"{what} must use http or https, not {scheme.group(1).lower()}:")
    try:
        return str(base.join(value))
    except (httpx.InvalidURL, ValueError, UnicodeError):
        raise FetchError(f"{what} is not a valid URL", code="invalid_url") from None


def _media_type(headers: httpx.Headers) -> str:
    return str(headers.get("content-type", "")).split(";", 1)[0].strip().lower()


def _seconds(value: float) -> str:
    return f"{value:g}"


def _too_large(body: str, limit: int) -> FetchTooLargeError:
    return FetchTooLargeError(f"{body} larger than {human_bytes(limit)}", limit=limit)


def _caused_by_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class SafeFetcher:
    """Fetches URLs under one `FetchPolicy`. Cheap to build; holds no connections between calls
    unless the caller passes its own `transport` (which the fetcher never closes)."""

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.policy = policy
        self.resolver: Resolver = resolver or system_resolver
        self.transport = transport
        self.user_agent = user_agent

    async def fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        time_limit: float,
        max_redirects: int = 5,
        headers: Mapping[str, str] | None = None,
        accept: Sequence[str] | None = None,
        what: str = "URL",
        body: str = "response",
        raise_for_status: bool = True,
    ) -> FetchResult:
        """GET `url` safely and return its body.

        `time_limit` caps the whole fetch in seconds (resolution, redirects, body).
        `accept`: media-type patterns (`image/*`) the response must match; `what` names the URL
        in error messages ("image URL"), `body` names the body ("image" → "image larger than
        20 MB"). With `raise_for_status`, a non-2xx final status is a `FetchError`.
        """
        try:
            async with asyncio.timeout(time_limit):
                return await self._fetch(
                    url,
                    max_bytes=max_bytes,
                    time_limit=time_limit,
                    max_redirects=max_redirects,
                    headers=headers or {},
                    accept=tuple(accept or ()),
                    what=what,
                    body=body,
                    raise_for_status=raise_for_status,
                )
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError(
                f"{what} took longer than {_seconds(time_limit)} s to fetch", code="fetch_timeout"
            ) from None
        except _UNEXPECTED as exc:
            # A failure mode not named above (httpx raises some outside `HTTPError`, such as
            # `InvalidURL`): still the fetch's failure, never a 500.
            log.info("fetch_failed", error=type(exc).__name__)
            raise FetchError(f"{what} could not be fetched") from None

    async def _fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        time_limit: float,
        max_redirects: int,
        headers: Mapping[str, str],
        accept: tuple[str, ...],
        what: str,
        body: str,
        raise_for_status: bool,
    ) -> FetchResult:
        sent = httpx.Headers(
            {
                "User-Agent": self.user_agent,
                "Accept": ", ".join(accept) if accept else "*/*",
                "Accept-Encoding": "identity",
            }
        )
        sent.update(headers)  # case-insensitive: the caller's values replace the defaults
        # The transport is driven directly, not through an `AsyncClient`: a client would parse
        # every redirect's Location itself (and raise on one it cannot parse), and would bring
        # cookies and proxy settings from the environment. Redirects are followed by hand below.
        transport = self.transport or httpx.AsyncHTTPTransport(
            verify=_default_ssl_context(), trust_env=False
        )
        timeouts = httpx.Timeout(time_limit).as_dict()
        try:
            hop_what = what
            target = self.policy.parse_url(url, what=hop_what)
            redirects: list[str] = []
            while True:
                addresses = await self._resolve(target, hop_what)
                response = await self._send(transport, timeouts, target, addresses, sent, hop_what)
                try:
                    location = response.headers.get("location")
                    if response.status_code in REDIRECT_STATUSES and location:
                        if len(redirects) >= max_redirects:
                            raise FetchError(
                                f"{what} redirected more than {max_redirects} times",
                                code="too_many_redirects",
                            )
                        hop_what = f"{what} redirect target"
                        next_url = _redirect_url(target.url, location, what=hop_what)
                        next_target = self.policy.parse_url(next_url, what=hop_what)
                        if next_target.origin != target.origin:
                            for name in CREDENTIAL_HEADERS:
                                sent.pop(name, None)
                        redirects.append(next_url)
                        target = next_target
                        continue
                    return await self._read(
                        response,
                        target,
                        redirects,
                        max_bytes=max_bytes,
                        accept=accept,
                        what=what,
                        body=body,
                        raise_for_status=raise_for_status,
                    )
                finally:
                    await response.aclose()
        finally:
            if self.transport is None:
                await transport.aclose()

    async def _resolve(self, target: Target, what: str) -> list[IPAddress]:
        if target.literal is not None:
            return self.policy.check_addresses(target, [str(target.literal)], what=what)
        try:
            addresses = await self.resolver(target.host)
        except (OSError, UnicodeError):
            raise FetchError(f"{what} host could not be resolved ({target.host})") from None
        return self.policy.check_addresses(target, addresses, what=what)

    async def _send(
        self,
        transport: httpx.AsyncBaseTransport,
        timeouts: dict[str, float | None],
        target: Target,
        addresses: list[IPAddress],
        headers: httpx.Headers,
        what: str,
    ) -> httpx.Response:
        extensions: dict[str, object] = {"timeout": timeouts}
        if target.scheme == "https" and target.literal is None:
            extensions["sni_hostname"] = target.host
        failure = "could not be reached"
        for ip in addresses:
            request = httpx.Request(
                "GET",
                target.url.copy_with(host=str(plain_address(ip))),
                headers={**headers, "host": target.host_header},
                extensions=extensions,
            )
            try:
                response = await transport.handle_async_request(request)
                response.request = request
                return response
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Try the next checked address; the cause goes to the log, not the client.
                log.info(
                    "fetch_connect_failed", host=target.host, ip=str(ip), error=type(exc).__name__
                )
                if _caused_by_tls(exc):
                    failure = "failed TLS verification"
                continue
            except httpx.HTTPError as exc:
                log.info("fetch_failed", host=target.host, ip=str(ip), error=type(exc).__name__)
                raise FetchError(f"{what} {failure} ({target.host})") from None
        raise FetchError(f"{what} {failure} ({target.host})")

    async def _read(
        self,
        response: httpx.Response,
        target: Target,
        redirects: list[str],
        *,
        max_bytes: int,
        accept: tuple[str, ...],
        what: str,
        body: str,
        raise_for_status: bool,
    ) -> FetchResult:
        status = response.status_code
        if raise_for_status and not 200 <= status < 300:
            raise FetchError(f"{what} answered HTTP {status}", code="fetch_status")
        media_type = _media_type(response.headers)
        if accept and media_type and not any(fnmatch.fnmatchcase(media_type, p) for p in accept):
            raise FetchError(
                f"{what} returned {media_type}, expected {' or '.join(accept)}",
                code="unsupported_content_type",
            )
        too_large = FetchTooLargeError(
            f"{body} larger than {human_bytes(max_bytes)}", limit=max_bytes
        )
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise too_large
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            log.info("fetch_body_failed", host=target.host, error=type(exc).__name__)
            raise FetchError(f"{what} failed while sending its {body}") from None
        return FetchResult(
            url=str(target.url),
            status=status,
            headers=response.headers,
            content=b"".join(chunks),
            redirects=tuple(redirects),
        )


async def safe_fetch(
    url: str,
    *,
    policy: FetchPolicy,
    max_bytes: int,
    time_limit: float,
    max_redirects: int = 5,
    headers: Mapping[str, str] | None = None,
    accept: Sequence[str] | None = None,
    resolver: Resolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    what: str = "URL",
    body: str = "response",
    raise_for_status: bool = True,
) -> FetchResult:
    """GET `url` under `policy` (see the module docstring); one-shot form of `SafeFetcher`."""
    fetcher = SafeFetcher(policy, resolver=resolver, transport=transport)
    return await fetcher.fetch(
        url,
        max_bytes=max_bytes,
        time_limit=time_limit,
        max_redirects=max_redirects,
        headers=headers,
        accept=accept,
        what=what,
        body=body,
        raise_for_status=raise_for_status,
    )
