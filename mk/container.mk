# Container images (docs/container.md): the root filesystems the images are made of, built
# and measured without a container engine, and the images themselves where one is at hand.

ROOTFS_DIR ?= target/rootfs
# Uncompressed size limits, MB (10^6 bytes); `make rootfs` fails when a rootfs is larger.
ROOTFS_SLIM_LIMIT_MB ?= 150
ROOTFS_FULL_LIMIT_MB ?= 1500
IMAGE_NAME ?= ferrum
# docker or podman, the first whose daemon answers (looked for only when `image` runs).
CONTAINER_ENGINE ?= $(shell for e in docker podman; do \
	if command -v $$e >/dev/null 2>&1 && $$e info >/dev/null 2>&1; then echo $$e; break; fi; done)

.PHONY: rootfs image

## rootfs: the slim and full images' root filesystems from the release tree dist/, in
## target/rootfs/{slim,full}, with their sizes; fails when one is over its limit
rootfs: build
	FERRUM_ROOTFS_LIMIT_MB=$(ROOTFS_SLIM_LIMIT_MB) scripts/rootfs.sh slim dist $(ROOTFS_DIR)/slim
	FERRUM_ROOTFS_LIMIT_MB=$(ROOTFS_FULL_LIMIT_MB) scripts/rootfs.sh full dist $(ROOTFS_DIR)/full

## image: build the images $(IMAGE_NAME):slim and $(IMAGE_NAME):full with docker or podman
image:
	@if [ -z "$(CONTAINER_ENGINE)" ]; then \
		echo "image: no container engine here (neither docker nor podman answers);" \
			"'make rootfs' builds and measures the same root filesystems without one" >&2; \
		exit 1; \
	fi
	$(CONTAINER_ENGINE) build --target slim -t $(IMAGE_NAME):slim .
	$(CONTAINER_ENGINE) build --target full -t $(IMAGE_NAME):full .
