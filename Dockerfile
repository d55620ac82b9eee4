# syntax=docker/dockerfile:1
# Three stages: bundle the dashboard and tracker from the npm lockfile, build the locked
# virtualenv with uv, then copy only those into a slim runtime that runs as an unprivileged user. One image for every role: `docker run IMAGE ingest|worker|api|…`.

FROM node:20-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY web/build.mjs ./
COPY web/src src
RUN node build.mjs

FROM python:3.11-slim AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir uv
WORKDIR /app
# Dependencies first: this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY README.md ./
COPY config config
COPY engine engine
COPY sinks sinks
COPY topologies topologies
# The project itself as a wheel, not an editable link: the runtime stage needs only .venv.
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim AS runtime
RUN groupadd --system --gid 10001 rollup \
    && useradd --system --uid 10001 --gid rollup --home-dir /app --shell /usr/sbin/nologin rollup
WORKDIR /app
COPY --from=build --chown=rollup:rollup /app/.venv /app/.venv
COPY --from=web --chown=rollup:rollup /web/dist /app/web-dist
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ROLLUP_DATA_DIR=/tmp/rollup \
    ROLLUP_HTTP_HOST=0.0.0.0 \
    ROLLUP_WORKER_WEB_HOST=0.0.0.0 \
    ROLLUP_LOG_FORMAT=json \
    ROLLUP_WEB_DIST_DIR=/app/web-dist
USER 10001:10001
EXPOSE 8000 6066
ENTRYPOINT ["rollup"]
CMD ["--help"]
