# cascade's image: the API (`cascade serve`, the default command) and the batch worker
# (`cascade worker`), from one wheel. Multi-stage: the build stage turns the sources into wheels
# (cascade's and its dependencies'); the final stage installs only those, without dev extras,
# compilers or the source tree, and runs as an unprivileged user.
#   docker build -t cascade .
#   docker run -p 8080:8080 -e CASCADE_RUNTIME_URL=... -e CASCADE_REDIS_URL=... cascade

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY tools ./tools
COPY workers ./workers
COPY templates ./templates
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CASCADE_STATE_DIR=/state \
    CASCADE_LOG_FORMAT=json
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels cascade \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cascade \
    && mkdir /state && chown cascade /state
USER cascade
WORKDIR /state
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]
CMD ["cascade", "serve", "--host", "0.0.0.0", "--port", "8080"]
