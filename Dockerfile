# Ferrum's container images (docs/container.md). Two targets:
#
#   docker build --target slim -t ferrum:slim .   ferrum + the onnxruntime backend
#   docker build --target full -t ferrum:full .   every CPU backend, the python one included
#
# The build stage runs `make build` (the release install tree dist/). scripts/rootfs.sh turns
# dist/ into a root filesystem, the same script `make rootfs` runs and measures without a
# container engine, and the final stages copy that folder onto an empty image: what is
# measured is what ships. No shell, no package manager, no compiler in the images.
#
# Run: docker run --rm -p 8000-8002:8000-8002 -v $PWD/model_repository:/models:ro ferrum:slim
# (the entrypoint is `ferrum --model-repository /models`; arguments are appended to it).

ARG BUILD_IMAGE=rust:1-bookworm

FROM ${BUILD_IMAGE} AS build
# python3-dev: the python backend embeds libpython; pip: the build fetches the ONNX Runtime,
# OpenVINO and libtorch wheels; binutils: rootfs.sh strips and reads ELF files.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      binutils ca-certificates make python3 python3-dev python3-pip python3-venv unzip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The download caches (crates, wheels, libtorch) and cargo's target folder are kept between
# builds; dist/, which the next stages read, stays in the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/root/.cache \
    --mount=type=cache,target=/src/target \
    make build

FROM build AS rootfs-full
RUN scripts/rootfs.sh full dist /rootfs

FROM build AS rootfs-slim
RUN scripts/rootfs.sh slim dist /rootfs

FROM scratch AS full
COPY --from=rootfs-full /rootfs/ /
USER 65532:65532
EXPOSE 8000 8001 8002
ENTRYPOINT ["/opt/ferrum/bin/ferrum", "--model-repository", "/models"]

# Last, so that a plain `docker build .` makes the small one.
FROM scratch AS slim
COPY --from=rootfs-slim /rootfs/ /
USER 65532:65532
EXPOSE 8000 8001 8002
ENTRYPOINT ["/opt/ferrum/bin/ferrum", "--model-repository", "/models"]
