# Convenience targets; the scripts are the source of truth.
IMAGE ?= lpo:0.1.0
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

# Compiles the Kubeflow pipeline definitions (pipelines/kfp).
pipelines: setup
	$(PYTHON) -m pipelines.kfp.compile
