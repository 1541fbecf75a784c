# The shop services (`shop serve products|orders`) and their migrations (`shop migrate`).
# Built by docker-compose.yml; which command runs is chosen there, not here.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: resolve the locked dependencies into /app/.venv -----------------------------
FROM ${PYTHON_IMAGE} AS builder

ARG UV_VERSION=0.13.9
# uv in a venv of its own: Debian's Python (the local stand-in) refuses `pip install` into the
# system (PEP 668), the official image would allow it.
RUN python3.11 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}"

# The base image's Python, never a downloaded one; compiled bytecode so the non-root runtime
# never needs to write next to the sources; copies, not hard links, out of uv's cache.
ENV PATH=/opt/uv/bin:$PATH \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3.11 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1

WORKDIR /app

# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

# Then the project itself (installed editable: `shop` runs from /app/src, next to
# migrations/ and alembic.ini, exactly as in a checkout).
COPY src/ ./src/
COPY migrations/ ./migrations/
COPY alembic.ini config.yaml ./
RUN uv sync --frozen --no-dev

# ---- runtime: the venv and the app, no build tools, not root ------------------------------
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 shop \
    && useradd --system --uid 10001 --gid shop --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin shop \
    && mkdir -m 0700 /auth && mkdir -m 0755 /auth-public /run/shop-secrets \
    && mkdir -m 0755 /run/shop-identities \
       /run/shop-identities/mysql /run/shop-identities/kafka /run/shop-identities/rabbitmq \
       /run/shop-identities/kafka-access /run/shop-identities/rabbitmq-user \
       /run/shop-identities/migrate /run/shop-identities/products /run/shop-identities/orders \
    && chown -R shop:shop /auth /auth-public /run/shop-secrets /run/shop-identities
# Mount points whose owner and mode docker-compose.yml's volumes take when they are new: /auth the
# development issuer's signing key, /auth-public its public key, /run/shop-secrets the passwords
# and certificates (all of them for the `secrets` service; a holder's own elsewhere), and
# /run/shop-identities/<holder> where the `secrets` service writes each holder's volume
# (deploy/compose/identities.py, HOLDERS).

WORKDIR /app
COPY --from=builder /app /app

# No credentials here: DB_PASSWORD, RABBITMQ_PASSWORD etc. come from the environment
# (docker-compose.yml) and otherwise fall back to the development defaults in config.yaml.
ENV PATH=/app/.venv/bin:$PATH \
    BIND_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001

# Product service 8080, order service 8081. Health checks live in docker-compose.yml because
# the port depends on which service the container runs.
EXPOSE 8080 8081

CMD ["shop", "--help"]
