# Shortcuts; each target is one documented command (see README "Running on a DGX Spark").
PYTHON ?= $(shell [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
PRESET ?= cpu
COMPOSE ?= docker compose --env-file .env -f docker/compose.yaml

.PHONY: dev wheels image up down doctor

dev:      ## serve the small CPU models with auto-reload (profile dev)
	scripts/dev.sh

wheels:   ## build llama-cpp-python + pywhispercpp from source: make wheels PRESET=cuda-sm121
	$(PYTHON) -m bindings.build --preset $(PRESET)

image:    ## build the DGX Spark image (docker/Dockerfile, cuda-sm121)
	$(COMPOSE) --profile prod build

up:       ## start the production server (profile prod) in the background
	COMPOSE_PROFILES=prod $(COMPOSE) up -d

down:
	COMPOSE_PROFILES=prod,mock,dev $(COMPOSE) down

doctor:
	$(PYTHON) -m spark_voice doctor
