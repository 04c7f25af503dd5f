# usage-proxy: the proxy as an image. docker-compose.yml builds it and runs it beside PostgreSQL.
#
# Two stages, so that the image carries wheels and no build tools. The entrypoint runs
# `usage-proxy serve`, which waits for the database, migrates it and serves; its settings come
# from USAGE_PROXY_* variables (see README.md).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels "."

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "usage-proxy" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/usage-proxy proxy
USER proxy
WORKDIR /var/lib/usage-proxy
ENV PYTHONUNBUFFERED=1 \
    USAGE_PROXY_HOST=0.0.0.0 \
    USAGE_PROXY_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_proxy/health' % os.environ.get('USAGE_PROXY_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["usage-proxy"]
CMD ["serve"]
