# Kubernetes and KServe deployment (deploy/): render the Helm chart without helm and check
# every manifest offline against the Kubernetes schemas. docs/kubernetes.md explains both.

.PHONY: chart-check manifests

# A small venv just for these targets (kubernetes-validate, PyYAML, jsonschema), so that
# checking manifests never pulls the test suite's large wheels. .venv is used instead when
# it already has them (as after `make test`).
DEPLOY_VENV := target/deploy-venv
DEPLOY_STAMP := $(DEPLOY_VENV)/.requirements.stamp
DEPLOY_PY = $(if $(shell .venv/bin/python -c 'import kubernetes_validate, yaml, jsonschema' \
	2>/dev/null && echo yes),.venv/bin/python,$(DEPLOY_VENV)/bin/python)

$(DEPLOY_STAMP): deploy/requirements.txt
	python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet --disable-pip-version-check -r deploy/requirements.txt
	touch $@

.PHONY: deploy-python
deploy-python:
	@if [ "$(DEPLOY_PY)" != ".venv/bin/python" ]; then $(MAKE) --no-print-directory $(DEPLOY_STAMP); fi

## chart-check: render the Helm chart (default values and each deploy/helm/ferrum/ci variant)
## and validate it, deploy/manifests and deploy/kserve against the Kubernetes schemas offline
chart-check: deploy-python
	$(DEPLOY_PY) deploy/validate_manifests.py

## manifests: regenerate the plain manifests in deploy/manifests/ from the chart
manifests: deploy-python
	$(DEPLOY_PY) deploy/validate_manifests.py --write-manifests
