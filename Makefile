# Convenience targets; the scripts are the source of truth.
# The one pinned image (components/image.py: LPO_IMAGE), used by every component.
IMAGE ?= $(shell $(PYTHON) -c 'from lpo.components.image import LPO_IMAGE; print(LPO_IMAGE)')
PYTHON ?= .venv/bin/python

.PHONY: help setup test demo image pipelines

help:
	@echo "targets: setup test demo image pipelines  (IMAGE=$(IMAGE))"

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

image:
	docker build -t $(IMAGE) .

# Compiles the Kubeflow pipelines (pipelines/kfp) to IR YAML in build/pipelines/.
pipelines:
	$(PYTHON) -m pipelines.kfp.compile --out-dir build/pipelines
