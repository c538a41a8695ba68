# One image for every Intake role: the app, the workers and the one-shot migration.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 intake \
    && mkdir -p /var/lib/intake/spool && chown intake /var/lib/intake/spool
WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir intake models api channels worker \
    && touch intake/__init__.py models/__init__.py api/__init__.py channels/__init__.py worker/__init__.py \
    && pip install . \
    && pip uninstall -y intake

COPY intake ./intake
COPY models ./models
COPY api ./api
COPY channels ./channels
COPY worker ./worker
RUN pip install --no-deps .

USER intake
EXPOSE 8000
CMD ["intake", "--log-json", "serve", "--host", "0.0.0.0", "--port", "8000"]
