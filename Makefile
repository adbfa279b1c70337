# Shortcuts; each target is one documented command (see README "Running on a DGX Spark").
PYTHON ?= $(shell [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
PRESET ?= cpu
COMPOSE ?= docker compose --env-file .env -f docker/compose.yaml

.PHONY: dev wheels image up down doctor vendor-fish

dev:      ## serve the small CPU models with auto-reload (profile dev)
	scripts/dev.sh

wheels:   ## build llama-cpp-python + pywhispercpp from source: make wheels PRESET=cuda-sm121
	$(PYTHON) -m bindings.build --preset $(PRESET)

vendor-fish: ## copy the pinned fish-speech tree into the build context (vendor/fish-speech, git-ignored)
	rm -rf vendor/fish-speech && cp -r $${FISH_SPEECH_SRC:-../shared/vendor/fish-speech} vendor/fish-speech \
	 && chmod -R u+w vendor/fish-speech \
	 && sed -n 's/^TTS_FISH_REF=//p' .env.default > vendor/fish-speech/.fish-speech-commit

image:    ## build the DGX Spark image (docker/Dockerfile, cuda-sm121)
	$(COMPOSE) --profile prod build

up:       ## start the production server (profile prod) in the background
	COMPOSE_PROFILES=prod $(COMPOSE) up -d

down:
	COMPOSE_PROFILES=prod,mock,dev $(COMPOSE) down

doctor:
	$(PYTHON) -m spark_voice doctor
