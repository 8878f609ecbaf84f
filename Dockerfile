FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY workers ./workers
COPY simulator ./simulator
COPY migrations ./migrations
RUN pip install --no-compile -e '.[monitoring]' && useradd --create-home mmjobs
USER mmjobs
EXPOSE 8000
CMD ["mmjobs", "api", "--host", "0.0.0.0", "--port", "8000"]
